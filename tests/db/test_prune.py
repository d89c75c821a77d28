"""Pruning deletes finished jobs in bounded batches, each in its own short transaction,
and never waits on a row someone else holds."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgjobs.app import App
from pgjobs.engine.maintenance import tasks as maintenance
from pgjobs.engine.maintenance.tasks import Pruner, run_round

pytestmark = pytest.mark.anyio


async def test_pruning_deletes_in_bounded_batches_and_skips_locked_rows(
    app: App, db: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "PRUNE_BATCH", 100)
    db.execute(
        "INSERT INTO jobs (type, status, payload, completed_at) "
        "SELECT 'old', 'completed', '{}', now() - interval '2 days' FROM generate_series(1, 250)"
    )
    pruner = Pruner(60.0, completed_ms=1000, failed_ms=1000)
    # An operator's open transaction holds one of the old jobs.
    with psycopg.connect(db_url) as holder:
        held = holder.execute("SELECT id FROM jobs ORDER BY id LIMIT 1 FOR UPDATE").fetchone()
        assert held is not None
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            waits = [await run_round(conn, pruner, app.clock) for _ in range(3)]
        left = [row["id"] for row in db.execute("SELECT id FROM jobs").fetchall()]
    # Two full batches of 100 (come back at once), then the last 49 (wait the interval);
    # the held job is skipped rather than waited on, and goes in a later round.
    assert waits == [0.0, 0.0, 60.0]
    assert left == [held[0]]
