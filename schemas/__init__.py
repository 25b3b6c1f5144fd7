"""The recallq wire contract: message models, error codes and queue topology.

Both the producer and the worker import this package; neither imports the other.
"""

from schemas.messages import (
    SCHEMA_HEADER,
    SCHEMA_VERSION,
    ErrorCode,
    ErrorInfo,
    MemoryHit,
    MemoryType,
    RankWeights,
    RetrievalRequest,
    RetrievalResponse,
    Timings,
)
from schemas.topology import QueueSpec, Topology

__all__ = [
    "SCHEMA_HEADER",
    "SCHEMA_VERSION",
    "ErrorCode",
    "ErrorInfo",
    "MemoryHit",
    "MemoryType",
    "QueueSpec",
    "RankWeights",
    "RetrievalRequest",
    "RetrievalResponse",
    "Timings",
    "Topology",
]
