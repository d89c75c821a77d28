"""job_ready, the table claims read, holds exactly the pending jobs in claim order,
whichever way a job enters or leaves `pending`; and the sweep repairs it where its
triggers could not run."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from pgjobs.app import App
from pgjobs.engine.maintenance.tasks import ReadySweeper, run_round
from pgjobs.queries import query
from tests.roles import login_role, url_as

pytestmark = pytest.mark.anyio

MIRROR = """
SELECT (SELECT coalesce(array_agg((queue, suspect, priority, run_at, id)::text ORDER BY id), '{}')
        FROM jobs WHERE status = 'pending') AS pending,
       (SELECT coalesce(array_agg((queue, suspect, priority, run_at, id)::text ORDER BY id), '{}')
        FROM job_ready) AS ready
"""
CLAIM = {"now": None, "queues": ["default", "other"], "limit": 5, "worker": uuid.UUID(int=1)}


def assert_mirrors(db: Any) -> int:
    row = db.execute(MIRROR).fetchone()
    assert row["ready"] == row["pending"]
    return len(row["pending"])


def add_jobs(db: Any, count: int, **columns: Any) -> list[uuid.UUID]:
    values = {"type": "t", "payload": "{}", **columns}
    statement = sql.SQL("INSERT INTO jobs ({}) SELECT {} FROM generate_series(1, %s) RETURNING id")
    names = sql.SQL(", ").join(map(sql.Identifier, values))
    marks = sql.SQL(", ").join(sql.Placeholder() * len(values))
    rows = db.execute(statement.format(names, marks), [*values.values(), count]).fetchall()
    return [r["id"] for r in rows]


def test_every_way_in_and_out_of_pending_keeps_the_mirror(db: Any) -> None:
    ids = add_jobs(db, 6)
    add_jobs(db, 2, status="delayed", run_at="2000-01-01")
    assert assert_mirrors(db) == 6
    # COPY, as create_many writes.
    with db.cursor() as cur, cur.copy("COPY jobs (type, queue, priority) FROM STDIN") as copy:
        for n in range(3):
            copy.write_row(("t", "other", n))
    assert assert_mirrors(db) == 9
    claimed = db.execute(query("claim_jobs"), CLAIM).fetchall()
    assert len(claimed) == 5
    assert assert_mirrors(db) == 4
    taken = {r["id"] for r in claimed}
    first, second = [i for i in ids if i not in taken][:2]  # still pending
    db.execute("UPDATE jobs SET priority = 1 WHERE id = %s", (first,))  # reordered
    db.execute("UPDATE jobs SET progress = 50 WHERE status = 'pending'")  # order unchanged
    db.execute("UPDATE jobs SET status = 'cancelled' WHERE id = %s", (first,))
    db.execute("UPDATE jobs SET status = 'pending' WHERE status = 'delayed'")  # staged
    db.execute(
        "UPDATE jobs SET status = 'pending', suspect = true WHERE id = %s", (claimed[0]["id"],)
    )
    assert assert_mirrors(db) == 6
    db.execute("DELETE FROM jobs WHERE id = %s", (second,))
    assert assert_mirrors(db) == 5
    db.execute("TRUNCATE jobs CASCADE")
    assert assert_mirrors(db) == 0


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(
            ["status", "priority", "run_at", "queue", "suspect", "delete", "insert", "claim"]
        ),
        st.integers(0, 7),
        # Into `active` only by a claim: a row left by a hand-made one is the sweep's.
        st.sampled_from(["pending", "delayed", "completed", "blocked"]),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=OPERATIONS)
def test_any_sequence_of_updates_keeps_the_mirror(db: Any, operations: list[Any]) -> None:
    db.execute("TRUNCATE jobs CASCADE")
    ids = add_jobs(db, 8)
    for op, n, status in operations:
        target = ids[n]
        if op == "status":
            db.execute("UPDATE jobs SET status = %s WHERE id = %s", (status, target))
        elif op == "priority":
            db.execute("UPDATE jobs SET priority = %s WHERE id = %s", (n, target))
        elif op == "run_at":
            db.execute("UPDATE jobs SET run_at = run_at + interval '1 s' WHERE id = %s", (target,))
        elif op == "queue":
            db.execute("UPDATE jobs SET queue = 'other' WHERE id = %s", (target,))
        elif op == "suspect":
            db.execute("UPDATE jobs SET suspect = NOT suspect WHERE id = %s", (target,))
        elif op == "delete":
            db.execute("DELETE FROM jobs WHERE id = %s", (target,))
        elif op == "claim":
            db.execute(query("claim_jobs"), {**CLAIM, "limit": n})
        else:
            ids[n] = add_jobs(db, 1, status=status)[0]
        # Several rows in one statement, some of them unchanged.
        db.execute("UPDATE jobs SET priority = priority WHERE id = ANY (%s)", (ids[:n],))
    assert_mirrors(db)


def test_a_role_that_may_write_jobs_needs_no_grant_on_job_ready(db: Any, db_url: str) -> None:
    """The triggers run as the table's owner, also where replication apply has them."""
    with login_role() as role:
        db.execute(
            sql.SQL("GRANT INSERT, UPDATE, SELECT ON jobs TO {}").format(sql.Identifier(role))
        )
        try:
            with psycopg.connect(url_as(db_url, role), autocommit=True) as writer:
                writer.execute("INSERT INTO jobs (type) VALUES ('t')")
                writer.execute("UPDATE jobs SET priority = 3")
            assert assert_mirrors(db) == 1
        finally:
            db.execute(sql.SQL("REVOKE ALL ON jobs FROM {}").format(sql.Identifier(role)))
    db.execute("SET session_replication_role = replica")
    add_jobs(db, 2)
    db.execute("RESET session_replication_role")
    assert assert_mirrors(db) == 3


async def test_the_sweep_adds_missing_rows_and_removes_stale_ones(
    app: App, db: Any, db_url: str
) -> None:
    stale, missing, kept = add_jobs(db, 3)
    # A job made active by hand keeps its row (claims remove their own); a row lost
    # while the triggers were off leaves its job unseen by claims.
    db.execute("UPDATE jobs SET status = 'active' WHERE id = %s", (stale,))
    db.execute("ALTER TABLE jobs DISABLE TRIGGER jobs_ready_delete")
    db.execute("DELETE FROM job_ready WHERE id = %s", (missing,))
    db.execute("ALTER TABLE jobs ENABLE ALWAYS TRIGGER jobs_ready_delete")
    ready = {r["id"] for r in db.execute("SELECT id FROM job_ready").fetchall()}
    assert ready == {stale, kept}
    claimed = db.execute(query("claim_jobs"), CLAIM).fetchall()
    assert [r["id"] for r in claimed] == [kept]  # the stale row's job is not pending
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        wait = await run_round(conn, ReadySweeper(), app.clock)
    assert wait == ReadySweeper().interval
    assert_mirrors(db)
    claimed = db.execute(query("claim_jobs"), CLAIM).fetchall()
    assert [r["id"] for r in claimed] == [missing]


async def test_the_sweep_covers_every_queue_after_writes_without_triggers(
    app: App, db: Any, db_url: str
) -> None:
    """The sweep finds queues through the (queue, status) index: pending jobs of a queue
    that has no row left in job_ready at all, and queues sorted before and after the
    busy ones, are found as well."""
    add_jobs(db, 5, queue="default", status="completed", completed_at="2000-01-01")
    for queue in ("a-first", "default", "m-middle", "z-last"):
        add_jobs(db, 3, queue=queue)
    triggers = ("jobs_ready_insert", "jobs_ready_update", "jobs_ready_delete")
    alter = sql.SQL("ALTER TABLE jobs {} TRIGGER {}")
    for name in triggers:
        db.execute(alter.format(sql.SQL("DISABLE"), sql.Identifier(name)))
    try:
        db.execute("DELETE FROM job_ready WHERE queue IN ('a-first', 'z-last')")
        db.execute("UPDATE jobs SET priority = 1 WHERE queue = 'm-middle'")
        add_jobs(db, 2, queue="only-unseen")
    finally:
        for name in triggers:
            db.execute(alter.format(sql.SQL("ENABLE ALWAYS"), sql.Identifier(name)))
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await run_round(conn, ReadySweeper(), app.clock)
    assert assert_mirrors(db) == 14
