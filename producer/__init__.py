"""The recallq client side: RPC client and CLI. Imports only `schemas`."""

from producer.client import Query, RetrievalClient, RetrievalTimeout

__all__ = ["Query", "RetrievalClient", "RetrievalTimeout"]
