"""The naive worker: one message at a time (prefetch 1), the baseline retriever, reply, ack.

Speaks recallq's wire contract, so the same client drives it and recallq.
`python -m benchmarks.naive_worker DB_PATH` with RECALLQ_AMQP_URL / RECALLQ_QUEUE_PREFIX.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from benchmarks.baseline import BaselineRetriever
from schemas.messages import CONTENT_TYPE, SCHEMA_HEADER, SCHEMA_VERSION, RetrievalRequest
from schemas.settings import BrokerSettings
from worker.embedding.backends import EncoderSpec


async def serve(db_path: Path) -> None:
    settings = BrokerSettings()
    retriever = BaselineRetriever(db_path, EncoderSpec(device="cpu", backend="torch"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    connection = await aio_pika.connect_robust(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1)
        queues = await settings.topology.declare_shared(channel)

        async def handle(message: AbstractIncomingMessage) -> None:
            request = RetrievalRequest.model_validate_json(message.body)
            response = retriever.retrieve(request)  # blocking, as inline retrieval is
            reply = aio_pika.Message(
                response.model_dump_json().encode(),
                content_type=CONTENT_TYPE,
                correlation_id=request.request_id,
                headers={SCHEMA_HEADER: SCHEMA_VERSION},
            )
            await channel.default_exchange.publish(reply, message.reply_to or "")
            await message.ack()

        await queues["requests"].consume(handle)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
