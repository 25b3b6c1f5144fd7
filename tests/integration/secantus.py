"""An in-process SecantusDB server (MongoDB wire protocol, no $vectorSearch) that can
be stopped and started again on the same port and data, to stage a store outage."""

from __future__ import annotations

from pathlib import Path

from secantus import SecantusDBServer


class RestartableSecantus:
    def __init__(self, storage: Path) -> None:
        self._storage = storage
        self._port = 0
        self._server: SecantusDBServer | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self._port}/?directConnection=true"

    def start(self) -> None:
        server = SecantusDBServer(
            port=self._port, storage_path=str(self._storage), replica_set_name=None
        )
        server.start()
        self._port = server.address[1]
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
