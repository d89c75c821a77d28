"""The maintenance leader's periodic statements read what they look for, never the history:
on a table of many finished jobs whose statistics are missing (autovacuum off, or behind a
table that grew since its last ANALYZE), each touches a few pages, not the whole table."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from pgjobs.queries import query

FINISHED_ROWS = 200_000
# Far below one page per finished job: a statement that walks an index of all jobs and
# filters reads about one buffer per row (about 420,000 at half a million rows).
MOST_BUFFERS = 2_000

# Every statement over `jobs` that the maintenance tasks run on a timer, with the values
# they send.
PERIODIC = {
    "stage_due_jobs": {"now": None, "limit": 5000},
    "rescue_stalled_jobs": {"now": None, "lock_ms": 30000, "max_stalled": 1},
    "prune_finished_jobs": {
        "now": None,
        "completed_s": 86400.0,
        "failed_s": 604800.0,
        "after_at": None,
        "after_id": None,
        "batch": 2000,
    },
    "sweep_blocked_jobs": {"now": None, "limit": 100},
    "sweep_job_ready": {},
}

pytestmark = pytest.mark.slow


def buffers(plan: dict[str, Any]) -> int:
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


def explain(db: Any, name: str, params: dict[str, Any]) -> dict[str, Any]:
    sql = query(name)
    sent = {key: params[key] for key in set(re.findall(r"%\((\w+)\)s", sql))}
    db.execute("BEGIN")
    try:
        explained = b"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql.encode()
        row = db.execute(explained, sent).fetchone()
    finally:
        db.execute("ROLLBACK")
    plan: dict[str, Any] = row["QUERY PLAN"][0]["Plan"]
    return plan


def test_periodic_maintenance_reads_a_few_pages_of_a_large_table_without_statistics(
    db: Any,
) -> None:
    # No ANALYZE may run behind the test's back and rescue a bad plan.
    db.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")
    db.execute(
        "INSERT INTO jobs (type, status, payload, attempts, started_at, completed_at) "
        "SELECT 'old', 'completed', '{}', 1, now(), now() FROM generate_series(1, %s)",
        (FINISHED_ROWS,),
    )
    # One of each kind the statements look for, so that each finds something to do.
    parent = db.execute("INSERT INTO jobs (type) VALUES ('parent') RETURNING id").fetchone()["id"]
    db.execute(
        "INSERT INTO jobs (type, status, depends_on) VALUES ('child', 'blocked', %s)",
        ([parent],),
    )
    db.execute(
        "INSERT INTO jobs (type, status, run_at) "
        "VALUES ('later', 'delayed', now() - interval '1 s')"
    )
    db.execute(
        "INSERT INTO jobs (type, status, worker_id, started_at) "
        "VALUES ('lost', 'active', %s, now() - interval '1 hour')",
        (uuid.uuid4(),),
    )
    # VACUUM (not ANALYZE) records the table's size, as the maintenance leader's does.
    db.execute("VACUUM jobs")
    [pages] = db.execute("SELECT relpages FROM pg_class WHERE relname = 'jobs'").fetchone().values()
    assert pages > MOST_BUFFERS

    read = {name: buffers(explain(db, name, params)) for name, params in PERIODIC.items()}

    assert {name: n for name, n in read.items() if n > MOST_BUFFERS} == {}, read
