"""Operator commands beside the request path: ingest, broker definitions, dead letters,
the README's settings table. Nothing on the request path imports them."""
