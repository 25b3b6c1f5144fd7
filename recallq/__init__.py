"""The `recallq` command: one front door to the worker's and the producer's CLIs."""
