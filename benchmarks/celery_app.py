"""What a user would pick instead: Celery on RabbitMQ with the rpc:// result backend.

Worker: `celery -A benchmarks.celery_app worker -P prefork -c <cores>`, with
RECALLQ_BENCH_DB naming the SQLite file. Each prefork process loads the model once.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from schemas.messages import RetrievalRequest
from schemas.settings import BrokerSettings

app = Celery(
    "recallq_bench",
    broker=BrokerSettings().amqp_url,
    backend="rpc://",
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=f"{BrokerSettings().queue_prefix}.celery",
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
)

_retriever: Any = None


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    global _retriever
    import torch

    from benchmarks.baseline import BaselineRetriever
    from worker.settings import WorkerSettings

    # One process per core, so one model thread per process: with the default (a
    # thread per core in every process) the processes' thread teams fight over the
    # cores and Celery ran 5x slower here. The baseline gets its best setting, and
    # the same embedder backend as recallq.
    torch.set_num_threads(1)
    spec = replace(WorkerSettings().encoder_spec(), threads=1)
    _retriever = BaselineRetriever(Path(os.environ["RECALLQ_BENCH_DB"]), spec)


@app.task(name="recallq_bench.retrieve")
def retrieve(body: str) -> str:
    request = RetrievalRequest.model_validate_json(body)
    return str(_retriever.retrieve(request).model_dump_json())
