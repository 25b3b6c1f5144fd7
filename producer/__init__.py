"""The recallq client side: RPC client and CLI. Imports only `schemas`."""

from producer.bulk import BulkJob, BulkSummary
from producer.client import (
    Query,
    RetrievalClient,
    RetrievalError,
    RetrievalOverloaded,
    RetrievalRefused,
    RetrievalTimeout,
    RetrievalUnavailable,
)

__all__ = [
    "BulkJob",
    "BulkSummary",
    "Query",
    "RetrievalClient",
    "RetrievalError",
    "RetrievalOverloaded",
    "RetrievalRefused",
    "RetrievalTimeout",
    "RetrievalUnavailable",
]
