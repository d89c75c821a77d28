"""The maintenance leader vacuums job_ready once a thousand dead rows pile up, so its
claim index sheds the entries of claimed jobs long before autovacuum's next visit, and
`jobs` (the history) once a tenth of its rows are dead."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgjobs.app import App
from pgjobs.engine.maintenance.tasks import (
    READY_VACUUM_DEAD_ROWS,
    VACUUM_DEAD_ROWS,
    VACUUM_NOT_OWNER_RECHECK,
    Vacuumer,
    default_tasks,
    run_round,
)
from pgjobs.queries import query
from tests.helpers import wait_until
from tests.roles import login_role, url_as

pytestmark = pytest.mark.anyio

VACUUM_STATS = "SELECT vacuum_count, n_dead_tup FROM pg_stat_user_tables WHERE relname = %s"


def make_dead_rows(db: Any, count: int) -> None:
    """`count` jobs claimed and finished: two dead row versions each, as a worker leaves."""
    db.execute(
        "INSERT INTO jobs (type, payload) SELECT 'noop', '{}' FROM generate_series(1, %s)",
        (count,),
    )
    db.execute("UPDATE jobs SET status = 'active'")
    db.execute("UPDATE jobs SET status = 'completed', completed_at = now()")
    db.execute("SELECT pg_stat_force_next_flush()")


def claim_into_dead_ready_rows(db: Any, count: int) -> None:
    """`count` new jobs claimed: each claim leaves a dead row in job_ready."""
    db.execute(
        "INSERT INTO jobs (type, payload) SELECT 'noop', '{}' FROM generate_series(1, %s)",
        (count,),
    )
    claim = {"now": None, "queues": ["default"], "limit": count, "worker": None}
    assert len(db.execute(query("claim_jobs"), claim).fetchall()) == count
    db.execute("SELECT pg_stat_force_next_flush()")


def stats(db: Any, table: str = "jobs") -> dict[str, Any]:
    row = db.execute(VACUUM_STATS, (table,)).fetchone()
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


async def test_vacuums_job_ready_after_a_thousand_claims(app: App, db: Any, db_url: str) -> None:
    """Each claimed job leaves one dead row in job_ready; `jobs` is left alone."""
    claim_into_dead_ready_rows(db, READY_VACUUM_DEAD_ROWS + 100)
    wait_until(lambda: stats(db, "job_ready")["n_dead_tup"] >= READY_VACUUM_DEAD_ROWS, timeout=15)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await run_round(conn, Vacuumer(), app.clock)
    wait_until(lambda: stats(db, "job_ready")["vacuum_count"] == 1, timeout=15)
    assert stats(db)["vacuum_count"] == 0


async def test_a_large_history_is_vacuumed_only_once_a_tenth_is_dead(
    app: App, db: Any, db_url: str
) -> None:
    """A pass over the indexes of a large table costs in proportion to it: 30,000 dead
    rows among 500,000 finished jobs are not yet worth one."""
    db.execute(
        "INSERT INTO jobs (type, status, payload) "
        "SELECT 'old', 'completed', '{}' FROM generate_series(1, 500000)"
    )
    db.execute("ANALYZE jobs")
    make_dead_rows_among(db, 15_000)
    wait_until(lambda: stats(db)["n_dead_tup"] >= 30_000, timeout=15)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await run_round(conn, Vacuumer(), app.clock)
    assert stats(db)["vacuum_count"] == 0
    make_dead_rows_among(db, 15_000)
    wait_until(lambda: stats(db)["n_dead_tup"] >= 60_000, timeout=15)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await run_round(conn, Vacuumer(), app.clock)
    wait_until(lambda: stats(db)["vacuum_count"] == 1, timeout=15)


def make_dead_rows_among(db: Any, count: int) -> None:
    """`count` new jobs run through to completed (two dead versions each), leaving the
    finished jobs already there alone."""
    db.execute(
        "INSERT INTO jobs (type, payload) SELECT 'noop', '{}' FROM generate_series(1, %s)",
        (count,),
    )
    db.execute("UPDATE jobs SET status = 'active' WHERE status = 'pending'")
    db.execute("UPDATE jobs SET status = 'completed' WHERE status = 'active'")
    db.execute("SELECT pg_stat_force_next_flush()")


async def test_job_ready_is_vacuumed_while_a_pass_over_jobs_holds_its_own_leader(
    app: App, db: Any, db_url: str
) -> None:
    """The workers run one vacuum task per table, each with its own leader lock: a long
    pass over the history must not keep the claims' table waiting."""
    ready_task, jobs_task = [t for t in default_tasks(app.settings) if isinstance(t, Vacuumer)]
    assert (ready_task.tables, jobs_task.tables) == ({"job_ready"}, {"jobs"})
    assert ready_task.name != jobs_task.name and ready_task.lock_key != jobs_task.lock_key
    # Both tables are due: the history has enough dead rows, and so has job_ready after
    # a thousand claims.
    make_dead_rows(db, VACUUM_DEAD_ROWS // 2 + 1000)
    claim_into_dead_ready_rows(db, READY_VACUUM_DEAD_ROWS + 100)
    wait_until(lambda: stats(db)["n_dead_tup"] >= VACUUM_DEAD_ROWS, timeout=15)
    wait_until(lambda: stats(db, "job_ready")["n_dead_tup"] >= READY_VACUUM_DEAD_ROWS, timeout=15)
    with psycopg.connect(db_url, autocommit=True) as busy_with_jobs:
        busy_with_jobs.execute("SELECT pg_advisory_lock(%s)", (jobs_task.lock_key,))
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await run_round(conn, jobs_task, app.clock)  # another leader holds it: nothing
            await run_round(conn, ready_task, app.clock)
        wait_until(lambda: stats(db, "job_ready")["vacuum_count"] == 1, timeout=15)
        assert stats(db)["vacuum_count"] == 0
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await run_round(conn, jobs_task, app.clock)
    wait_until(lambda: stats(db)["vacuum_count"] == 1, timeout=15)
    assert stats(db, "job_ready")["vacuum_count"] == 1
