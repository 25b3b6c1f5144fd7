"""The recallq worker: consume, batch, embed, search, rank, reply."""
