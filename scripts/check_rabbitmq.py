"""Fail fast, with directions, when RabbitMQ is not reachable at RECALLQ_AMQP_URL."""

from __future__ import annotations

import asyncio
import sys

import aio_pika

from schemas.settings import BrokerSettings


async def check(url: str) -> None:
    connection = await asyncio.wait_for(aio_pika.connect(url), timeout=10)
    await connection.close()


def main() -> int:
    url = BrokerSettings().amqp_url
    try:
        asyncio.run(check(url))
    except Exception as exc:
        print(
            f"RabbitMQ is not reachable at {url}: {exc!r}\n"
            "Start one, then retry:\n"
            "  on this machine:  rabbitmq-server -detached\n"
            "  with Docker:      docker run -d -p 5672:5672 rabbitmq:3-management\n"
            "or point RECALLQ_AMQP_URL at a running broker.",
            file=sys.stderr,
        )
        return 1
    print(f"RabbitMQ is reachable at {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
