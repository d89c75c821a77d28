"""The claim stays on its partial index however many finished jobs the table holds."""

from __future__ import annotations

from typing import Any

import pytest

from pgjobs.queries import query

FINISHED_ROWS = 1_000_000


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


@pytest.mark.slow
def test_claim_reads_only_the_pending_index_with_a_million_finished_jobs(db: Any) -> None:
    db.execute(
        "INSERT INTO jobs (type, queue, status, payload, created_at, completed_at, run_at) "
        "SELECT 'old', 'default', 'completed', '{}', now() - interval '1 hour', now(), now() "
        "FROM generate_series(1, %s)",
        (FINISHED_ROWS,),
    )
    db.execute("INSERT INTO jobs (type, payload) SELECT 'new', '{}' FROM generate_series(1, 1000)")
    db.execute("VACUUM ANALYZE jobs")
    params = {"now": None, "queues": ["default", "high-priority"], "limit": 10, "worker": None}
    db.execute("BEGIN")
    try:
        row = db.execute(
            b"EXPLAIN (ANALYZE, FORMAT JSON) " + query("claim_jobs").encode(), params
        ).fetchone()
    finally:
        db.execute("ROLLBACK")
    plan = row["QUERY PLAN"][0]["Plan"]  # psycopg decodes the JSON plan
    nodes = plan_nodes(plan)
    scans = [n for n in nodes if n.get("Relation Name") == "jobs"]
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"], scans
    pending_reads = [n for n in scans if n.get("Index Name") == "jobs_claim_idx"]
    assert pending_reads, [n.get("Index Name") for n in scans]
    # Each queue's ordered scan stops after LIMIT rows: no sort of all pending jobs.
    assert all(n["Actual Rows"] <= 10 for n in pending_reads)
    assert sum(n["Actual Rows"] for n in pending_reads) <= 20
