"""The one array type passed between the embedder and the stores."""

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]  # rows of unit-length float32 embeddings
