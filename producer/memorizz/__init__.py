"""memorizz agents retrieving through recallq: `RecallqProvider(MongoDBProvider(config))`.

Installed with the optional extra `recallq[memorizz]` (memorizz is licensed PolyForm
Noncommercial: recallq itself never depends on it, and this package never imports it;
it only wraps the provider object a caller made).
"""

from producer.blocking import BlockingClient
from producer.memorizz.provider import RecallqProvider, RecallqReplyError, RecallqStats
from producer.memorizz.routes import Options, agent_wide_supported

__all__ = [
    "BlockingClient",
    "Options",
    "RecallqProvider",
    "RecallqReplyError",
    "RecallqStats",
    "agent_wide_supported",
]
