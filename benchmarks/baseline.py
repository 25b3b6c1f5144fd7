"""The "before": retrieval one request at a time, as an agent library does it inline.

Embed the one query, then for each memory type in turn fetch the tenant's rows
and score them, rank, answer. Both the naive worker and the Celery task run this:
the naive worker with sentence-transformers on torch (the seed's "before"), Celery
with the same embedder backend as recallq (that comparison is about architecture).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np

from schemas.messages import RetrievalRequest, RetrievalResponse, Timings
from worker.embedding.backends import EncoderSpec, load_encoder
from worker.rank import rank
from worker.store import Candidate, Memory


class BaselineRetriever:
    def __init__(self, db_path: Path, spec: EncoderSpec) -> None:
        self._encoder = load_encoder(spec)
        self._db = sqlite3.connect(db_path, check_same_thread=False)
        self._encoder.encode(["warm-up"])

    def retrieve(self, request: RetrievalRequest) -> RetrievalResponse:
        started = time.perf_counter()
        vector = self._encoder.encode([request.query])[0]
        embedded = time.perf_counter()
        results = {
            memory_type: rank(
                self._search(memory_type, request.memory_id, vector, limit * 4),
                limit=limit,
                now=time.time(),
                weights=request.weights,
                min_score=request.min_score,
            )
            for memory_type, limit in request.limits.items()
        }
        done = time.perf_counter()
        timings = Timings(
            embed_ms=(embedded - started) * 1000,
            search_ms=(done - embedded) * 1000,
            total_ms=(done - started) * 1000,
        )
        return RetrievalResponse(
            request_id=request.request_id,
            status="ok",
            results=results,
            timings=timings,
            batch_size=1,
        )

    def _search(
        self, memory_type: str, memory_id: str, vector: np.ndarray, k: int
    ) -> list[Candidate]:
        rows = self._db.execute(
            "SELECT id, content, timestamp, role, importance, situational_tags, embedding "
            "FROM memories WHERE memory_type = ? AND memory_id = ?",
            (memory_type, memory_id),
        ).fetchall()
        if not rows:
            return []
        matrix = np.vstack([np.frombuffer(row[6], dtype=np.float32) for row in rows])
        scores = matrix @ vector
        best = np.argsort(-scores)[:k]
        return [
            Candidate(
                Memory(
                    id=rows[i][0],
                    memory_id=memory_id,
                    memory_type=memory_type,
                    content=rows[i][1],
                    timestamp=rows[i][2],
                    role=rows[i][3],
                    importance=rows[i][4],
                    situational_tags=tuple(json.loads(rows[i][5])) if rows[i][5] else None,
                ),
                float(scores[i]),
            )
            for i in best
        ]
