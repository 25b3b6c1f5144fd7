"""The short chaos run: a few hundred requests through two workers, one killed and
restarted; every request answered once. The long run is `python -m benchmarks chaos`."""

from __future__ import annotations

from pathlib import Path

from benchmarks.chaos import run_chaos


async def test_a_short_chaos_run_loses_nothing(amqp_url: str, tmp_path: Path) -> None:
    report = await run_chaos(requests=400, kills=1, workdir=tmp_path)
    assert report.kills == 1
    assert report.answered_at_kills[0] < 400, "the kill came after the work was done"
    assert report.lost == []
    assert report.answered == report.sent == 400
    assert report.by_status == {"ok": 400}
