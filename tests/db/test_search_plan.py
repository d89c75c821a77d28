"""Every shape of job search reads its index on a large table: a payload field
jobs_payload_search_idx, error words jobs_error_search_idx, an id prefix a range of the
primary key. The searches' speed on a million jobs is `bin/bench --search`'s concern;
this pins the plans that make it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pgjobs.ops.search import parse_search
from pgjobs.queries import query
from tests.conftest import create_database, database_url, drop_database

ROWS = 1_000_000  # the size the search must stay fast at (bin/bench --search)
pytestmark = pytest.mark.xdist_group("search_plan")


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


@pytest.fixture(scope="module")
def filled_url(template_db: str) -> Iterator[str]:
    """Jobs with varied payloads, 15 % failed with one of six errors, analysed."""
    name = create_database(template_db)
    try:
        with psycopg.connect(database_url(name), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO jobs (type, queue, status, payload, created_at, run_at, last_error) "
                "SELECT (ARRAY['send-email', 'http-request', 'report'])[1 + i %% 3], 'default', "
                "       CASE WHEN i %% 100 < 15 THEN 'failed' ELSE 'completed' END, "
                "       jsonb_build_object('user_id', i %% 50000, "
                "                          'to', 'u' || i || '@example.com'),"
                "       now() - make_interval(secs => i), now(), "
                "       CASE WHEN i %% 100 < 15 THEN (ARRAY['TimeoutError: timed out', "
                "           'ConnectError: connection refused', 'ValueError: bad amount', "
                "           'KeyError: customer', 'RuntimeError: out of memory', "
                "           'DeadlockDetected: deadlock detected'])[1 + (i / 100) %% 6] END "
                "FROM generate_series(1, %s) AS i",
                (ROWS,),
            )
            conn.execute("VACUUM ANALYZE jobs")
        yield database_url(name)
    finally:
        drop_database(name)


def explain(url: str, text: str) -> list[dict[str, Any]]:
    params = {
        **parse_search(text).params(),
        "after_created": None,
        "after_id": None,
        "limit": 51,
        "preview": 200,
    }
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute(
            b"EXPLAIN (FORMAT JSON) " + query("ops_search_jobs").encode(), params
        ).fetchone()
    assert row is not None
    return plan_nodes(row["QUERY PLAN"][0]["Plan"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("user_id=4242", "jobs_payload_search_idx"),
        ("to=u77@example.com", "jobs_payload_search_idx"),
        ("user_id=4242 status:failed", "jobs_payload_search_idx"),
        ('error:"deadlock detected"', "jobs_error_search_idx"),
        ("refused type:http-request", "jobs_error_search_idx"),
        ("id:0193a1b2", "jobs_pkey"),
    ],
)
def test_each_search_shape_reads_its_index(filled_url: str, text: str, index: str) -> None:
    nodes = explain(filled_url, text)
    used = {n.get("Index Name") for n in nodes}
    assert index in used, [(n["Node Type"], n.get("Index Name")) for n in nodes]
    assert not any(n["Node Type"] == "Seq Scan" for n in nodes)
