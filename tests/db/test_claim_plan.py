"""The claim stays on job_ready's index, and reads jobs by key only, however many finished
jobs the table holds."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pgjobs.db import GENERIC_PLANS
from pgjobs.dev.limits import completed
from pgjobs.queries import query
from tests.conftest import create_database, database_url, drop_database

FINISHED_ROWS = 1_000_000

# Both tests that read a filled, analyzed table share one (see `filled`): on one xdist
# worker, so the million rows are written once.
pytestmark = pytest.mark.xdist_group("claim_plan")


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


def fill(db: Any, *, analyze: bool = True) -> None:
    """A million finished jobs and 1,000 pending ones (with fresh statistics unless
    `analyze` is false)."""
    db.execute(
        "INSERT INTO jobs (type, queue, status, payload, created_at, completed_at, run_at) "
        "SELECT 'old', 'default', 'completed', '{}', now() - interval '1 hour', now(), now() "
        "FROM generate_series(1, %s)",
        (FINISHED_ROWS,),
    )
    db.execute("INSERT INTO jobs (type, payload) SELECT 'new', '{}' FROM generate_series(1, 1000)")
    if analyze:
        db.execute("VACUUM ANALYZE jobs, job_ready")


@pytest.fixture(scope="module")
def filled_db_url(template_db: str) -> Iterator[str]:
    """A database filled once for the module (a million rows take seconds to write and
    analyze); the tests change it only inside transactions they roll back."""
    name = create_database(template_db)
    try:
        with psycopg.connect(database_url(name), autocommit=True) as conn:
            fill(conn)
        yield database_url(name)
    finally:
        drop_database(name)


@pytest.fixture
def filled(filled_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of its own (prepared statements, session settings) to that database."""
    with psycopg.connect(filled_db_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def index_reads(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's reads of jobs and job_ready, leaving out the removal of claimed rows
    from job_ready, which finds them by address (see ready_removals)."""
    return [
        n
        for n in plan_nodes(plan)
        if n.get("Relation Name") in ("jobs", "job_ready")
        and n["Node Type"] != "ModifyTable"
        and not is_ready_removal(n)
    ]


def is_ready_removal(node: dict[str, Any]) -> bool:
    return node.get("Relation Name") == "job_ready" and "ctid" in (
        node.get("TID Cond", "") + node.get("Filter", "")
    )


def ready_removals(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in plan_nodes(plan) if is_ready_removal(n)]


def jobs_writes(plan: dict[str, Any]) -> list[int]:
    """Rows written to jobs by the plan's ModifyTable nodes (RETURNING rows)."""
    return [
        n["Actual Rows"]
        for n in plan_nodes(plan)
        if n.get("Relation Name") == "jobs" and n["Node Type"] == "ModifyTable"
    ]


@pytest.mark.slow
def test_claim_reads_only_the_pending_index_with_a_million_finished_jobs(filled: Any) -> None:
    db = filled
    params = {"now": None, "queues": ["default", "high-priority"], "limit": 10, "worker": None}
    db.execute("BEGIN")
    try:
        row = db.execute(
            b"EXPLAIN (ANALYZE, FORMAT JSON) " + query("claim_jobs").encode(), params
        ).fetchone()
        left = db.execute("SELECT count(*) AS n FROM job_ready").fetchone()["n"]
    finally:
        db.execute("ROLLBACK")
    plan = row["QUERY PLAN"][0]["Plan"]  # psycopg decodes the JSON plan
    scans = index_reads(plan)
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"], scans
    assert {(n["Relation Name"], n["Index Name"]) for n in scans} <= {
        ("job_ready", "job_ready_claim_idx"),
        ("jobs", "jobs_pkey"),
    }, scans
    pending_reads = [n for n in scans if n.get("Index Name") == "job_ready_claim_idx"]
    assert pending_reads, [n.get("Index Name") for n in scans]
    # Each queue's ordered scan stops after LIMIT rows: no sort of all pending jobs.
    assert all(n["Actual Rows"] <= 10 for n in pending_reads)
    assert sum(n["Actual Rows"] for n in pending_reads) <= 20
    # The claimed jobs left job_ready in the same statement, found by their addresses
    # (a thousand pending rows are few enough for the planner to read them in a row).
    assert [n["Actual Rows"] for n in ready_removals(plan)] == [10]
    assert jobs_writes(plan) == [10]
    assert left == 1000 - 10


def prepare_generic(db: Any, name: str, sql: str) -> list[str]:
    """PREPARE `sql` (psycopg's %(x)s placeholders become $n) and return the parameter
    names in order. Workers run these statements prepared with generic plans."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    db.execute(f"PREPARE {name} AS " + re.sub(r"%\((\w+)\)s", number, sql))
    return names


def explain_generic(db: Any, name: str, names: list[str], params: dict[str, Any]) -> Any:
    # Literal arguments: EXECUTE's own parameters would have no type to resolve to.
    arguments = sql.SQL(", ").join(sql.Literal(params[n]) for n in names)
    row = db.execute(
        sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {}({})").format(
            sql.Identifier(name), arguments
        )
    ).fetchone()
    return row["QUERY PLAN"][0]["Plan"]


def use_hot_session_settings(db: Any) -> None:
    """What the worker's claim sessions set (db.GENERIC_PLANS)."""
    for name, value in re.findall(r"-c (\w+)=(\S+)", GENERIC_PLANS):
        db.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))


@pytest.mark.slow
@pytest.mark.parametrize("made", ["with fresh statistics", "on an empty table"])
def test_generic_plans_of_claim_and_finish_read_jobs_by_index_only(
    request: pytest.FixtureRequest, made: str
) -> None:
    """The worker's claim and finish run with reused generic plans, made without the
    parameters' values (the LIMIT, the batch's ids): they must not fall back to reading
    the table, which holds a million finished jobs here. A plan made while the table was
    empty is kept while it fills up (until the next ANALYZE): it must hold up too."""
    db = request.getfixturevalue("db" if made == "on an empty table" else "filled")
    use_hot_session_settings(db)
    claim = {"now": None, "queues": ["default"], "limit": 10, "worker": uuid.uuid4()}
    claim_names = prepare_generic(db, "claim_jobs", query("claim_jobs"))
    finish_names = prepare_generic(db, "finish_runs", query("finish_runs"))
    if made == "on an empty table":
        # No ANALYZE may replace the plans behind the test's back.
        db.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")
        db.execute("ALTER TABLE job_ready SET (autovacuum_enabled = false)")
        db.execute("ANALYZE jobs, job_ready")
        db.execute("BEGIN")
        explain_generic(db, "claim_jobs", claim_names, claim)
        explain_generic(db, "finish_runs", finish_names, {**claim, **completed([])})
        db.execute("ROLLBACK")
        fill(db, analyze=False)
    db.execute("BEGIN")
    try:
        active = db.execute(query("claim_jobs"), claim).fetchall()
        claim_plan = explain_generic(db, "claim_jobs", claim_names, claim)
        finish_plan = explain_generic(
            db, "finish_runs", finish_names, {**claim, **completed(active)}
        )
    finally:
        db.execute("ROLLBACK")
    # The claim reads the pending jobs in order and stops; the finished runs are looked
    # up one by one by primary key, not matched against every active job.
    for plan, indexes in [
        (claim_plan, {"job_ready_claim_idx", "jobs_pkey"}),
        (finish_plan, {"jobs_pkey"}),
    ]:
        scans = index_reads(plan)
        assert {n["Node Type"] for n in scans} <= {"Index Scan", "Index Only Scan"}, scans
        assert {n["Index Name"] for n in scans} == indexes, scans
        assert all(n["Actual Rows"] <= 10 for n in scans), [
            (n["Index Name"], n["Actual Rows"], n.get("Index Cond")) for n in scans
        ]
        # Each did its work: 10 rows claimed, then the 10 claimed before recorded.
        assert jobs_writes(plan) == [10], plan
    # The claimed jobs leave job_ready by address, never by reading the table.
    assert [(n["Node Type"], n["Actual Rows"]) for n in ready_removals(claim_plan)] == [
        ("Tid Scan", 10)
    ]


@pytest.mark.slow
def test_custom_plans_of_claim_and_finish_read_jobs_by_index_only(filled: Any) -> None:
    """Behind a transaction pooler (JOBS_POOL_MODE=transaction) nothing is prepared and no
    planner setting is sent: every claim and finish is planned with its own values and
    the default settings. Those plans must keep to the same indexes."""
    db = filled
    claim = {"now": None, "queues": ["default"], "limit": 10, "worker": uuid.uuid4()}
    explain = b"EXPLAIN (ANALYZE, FORMAT JSON) "
    db.execute("BEGIN")
    try:
        active = db.execute(query("claim_jobs"), claim).fetchall()
        claim_plan = db.execute(explain + query("claim_jobs").encode(), claim).fetchone()
        finish_plan = db.execute(
            explain + query("finish_runs").encode(), {**claim, **completed(active)}
        ).fetchone()
    finally:
        db.execute("ROLLBACK")
    for row, indexes in [
        (claim_plan, {"job_ready_claim_idx", "jobs_pkey"}),
        (finish_plan, {"jobs_pkey"}),
    ]:
        plan = row["QUERY PLAN"][0]["Plan"]
        scans = index_reads(plan)
        assert {n["Node Type"] for n in scans} <= {"Index Scan", "Index Only Scan"}, scans
        assert {n["Index Name"] for n in scans} == indexes, scans
        assert all(n["Actual Rows"] <= 10 for n in scans), [
            (n["Index Name"], n["Actual Rows"]) for n in scans
        ]
        assert jobs_writes(plan) == [10]
