"""The maintenance leader vacuums `jobs` once enough dead rows pile up, so the claim
index sheds the entries of claimed jobs long before autovacuum's next visit."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgjobs.app import App
from pgjobs.engine.maintenance.tasks import (
    VACUUM_DEAD_ROWS,
    VACUUM_NOT_OWNER_RECHECK,
    Vacuumer,
    run_round,
)
from tests.helpers import wait_until
from tests.roles import login_role, url_as

pytestmark = pytest.mark.anyio

VACUUM_STATS = "SELECT vacuum_count, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'jobs'"


def make_dead_rows(db: Any, count: int) -> None:
    """`count` jobs claimed and finished: two dead row versions each, as a worker leaves."""
    db.execute(
        "INSERT INTO jobs (type, payload) SELECT 'noop', '{}' FROM generate_series(1, %s)",
        (count,),
    )
    db.execute("UPDATE jobs SET status = 'active'")
    db.execute("UPDATE jobs SET status = 'completed', completed_at = now()")
    db.execute("SELECT pg_stat_force_next_flush()")


def stats(db: Any) -> dict[str, Any]:
    row = db.execute(VACUUM_STATS).fetchone()
    assert row is not None
    return dict(row)


async def test_vacuums_once_dead_rows_pass_the_threshold(app: App, db: Any, db_url: str) -> None:
    make_dead_rows(db, VACUUM_DEAD_ROWS // 2 + 1000)
    wait_until(lambda: stats(db)["n_dead_tup"] >= VACUUM_DEAD_ROWS, timeout=15)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        wait = await run_round(conn, Vacuumer(), app.clock)
        # The session-level leader lock is given back at the end of the round.
        locks = await (
            await conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).fetchone()
    assert wait == Vacuumer().interval
    assert locks == (0,)
    wait_until(lambda: stats(db)["vacuum_count"] == 1, timeout=15)
    assert stats(db)["n_dead_tup"] < 1000


async def test_leaves_a_table_with_few_dead_rows_alone(app: App, db: Any, db_url: str) -> None:
    make_dead_rows(db, 100)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await run_round(conn, Vacuumer(), app.clock)
    assert stats(db)["vacuum_count"] == 0


async def test_only_the_lock_holder_vacuums(app: App, db: Any, db_url: str) -> None:
    make_dead_rows(db, VACUUM_DEAD_ROWS // 2 + 1000)
    wait_until(lambda: stats(db)["n_dead_tup"] >= VACUUM_DEAD_ROWS, timeout=15)
    with psycopg.connect(db_url, autocommit=True) as leader:
        leader.execute("SELECT pg_advisory_lock(%s)", (Vacuumer.lock_key,))
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await run_round(conn, Vacuumer(), app.clock)
    assert stats(db)["vacuum_count"] == 0


async def test_a_worker_that_does_not_own_jobs_leaves_vacuum_to_autovacuum(
    app: App, db: Any, db_url: str
) -> None:
    """A worker may log in as a role that only uses the tables: VACUUM would skip the
    table with a warning every second; the round asks again in ten minutes instead."""
    make_dead_rows(db, VACUUM_DEAD_ROWS // 2 + 1000)
    wait_until(lambda: stats(db)["n_dead_tup"] >= VACUUM_DEAD_ROWS, timeout=15)
    with login_role() as role:
        url = url_as(db_url, role)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            wait = await run_round(conn, Vacuumer(), app.clock)
    assert wait == VACUUM_NOT_OWNER_RECHECK
    assert stats(db)["vacuum_count"] == 0
