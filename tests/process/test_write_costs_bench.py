"""bench/write_costs.py runs every variant, and each one puts back what it took away:
the schema and the finish statements are as shipped afterwards (no throughput is
asserted beyond "the drains finished")."""

from __future__ import annotations

import psycopg

from bench import write_costs
from pgjobs.queries import query


def schema_of_jobs(url: str) -> set[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('jobs', 'job_results')"
        ).fetchall()
        keys = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'job_results'::regclass"
        ).fetchall()
    return {(str(name), str(definition)) for name, definition in [*indexes, *keys]}


def test_every_variant_drains_and_puts_the_schema_back(db_url: str) -> None:
    shipped_schema = schema_of_jobs(db_url)
    shipped_finish = [query(name) for name in write_costs.FINISH_STATEMENTS]

    rates = write_costs.run(db_url, rounds=1, count=200)

    assert set(rates) == set(write_costs.variants())
    assert all(len(values) == 1 and values[0] > 0 for values in rates.values())
    assert schema_of_jobs(db_url) == shipped_schema
    assert [query(name) for name in write_costs.FINISH_STATEMENTS] == shipped_finish
    rows = write_costs.table(rates)
    assert rows[0]["variant"] == "as shipped" and rows[0]["ratio_to_shipped"] == 1.0


def test_without_result_rows_really_records_none(db_url: str) -> None:
    with write_costs.without_result_rows(db_url):
        write_costs.run_once(db_url, count=50)
    with psycopg.connect(db_url) as conn:
        done = conn.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()
        results = conn.execute("SELECT count(*) FROM job_results").fetchone()
    assert done == (50,) and results == (0,)
