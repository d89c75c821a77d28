"""Benchmark: what the writes of a job's life cost the drain, one at a time.

The in-process drain of `pgjobs bench` (pgjobs/dev/workloads.py: 20,000 no-op jobs, an
`App.worker(concurrency=10)` with every default, wall clock from worker start until
every job is recorded) on a scratch database, in interleaved rounds of variants that
each take one write away:

- `as shipped`;
- `no job_results FK`: the foreign key from job_results to jobs dropped (its check is a
  query per result row);
- `no job_results rows`: the finish statements' insert of the result row left out;
- `no <index>`: one secondary index of `jobs` dropped (each non-HOT update of a job,
  its claim and its finish, adds an entry to every index whose predicate holds).

Every variant removes something the schema contract or a feature relies on: they are
experiments that show where the server's time per job goes, never settings. Each
round drains once per variant, in turn, so drift of the machine spreads over all of
them; the table gives each variant's median, range, and the median of its per-round
ratio to `as shipped`.

Usage:

    python -m bench.write_costs [--rounds 4] [--count 20000] [--quick]

`--quick` (2 rounds of 2,000 jobs) is a smoke run. The server is
PGJOBS_BENCH_DATABASE_URL, else PGJOBS_TEST_DATABASE_URL, else DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import psycopg

import pgjobs.queries
from bench.common import ROOT, against_baseline, scratch, server_url, write
from pgjobs.dev import workloads

HOT_INDEXES = ("idx_jobs_status", "idx_jobs_type", "idx_jobs_created", "jobs_payload_search_idx")
RESULTS_FK = "job_results_job_id_fkey"
FINISH_STATEMENTS = ("finish_runs", "finish_runs_logged")

Variant = Callable[[str], AbstractContextManager[None]]


@contextmanager
def as_shipped(url: str) -> Iterator[None]:
    yield


@contextmanager
def without_results_fk(url: str) -> Iterator[None]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE job_results DROP CONSTRAINT {RESULTS_FK}")
    try:
        yield
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            # The drain's truncate did not reach job_results without the key.
            conn.execute("TRUNCATE job_results")
            conn.execute(
                f"ALTER TABLE job_results ADD CONSTRAINT {RESULTS_FK} FOREIGN KEY (job_id) "
                "REFERENCES jobs (id) ON DELETE CASCADE"
            )


@contextmanager
def without_result_rows(url: str) -> Iterator[None]:
    """The finish statements with their `results` step made a no-op, in this process's
    statement cache (the drain's worker runs in this process)."""
    statements = pgjobs.queries._load()
    shipped = {name: statements[name] for name in FINISH_STATEMENTS}
    for name, text in shipped.items():
        start, end = text.index("results AS ("), text.index("failures AS (")
        statements[name] = text[:start] + "results AS (SELECT 1),\n" + text[end:]
    try:
        yield
    finally:
        statements.update(shipped)


def without_index(name: str) -> Variant:
    @contextmanager
    def variant(url: str) -> Iterator[None]:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (name,)
            ).fetchone()
            if row is None:
                raise SystemExit(f"no index {name} in the schema")
            conn.execute(f"DROP INDEX {name}")
        try:
            yield
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(row[0])

    return variant


def variants() -> dict[str, Variant]:
    found: dict[str, Variant] = {
        "as shipped": as_shipped,
        "no job_results FK": without_results_fk,
        "no job_results rows": without_result_rows,
    }
    for index in HOT_INDEXES:
        found[f"no {index}"] = without_index(index)
    return found


def run_once(url: str, count: int) -> float:
    """One drain of `count` no-op jobs, in jobs per second."""
    return float(asyncio.run(workloads.drain(url, count))["jobs_per_s"])


def run(url: str, rounds: int, count: int) -> dict[str, list[float]]:
    chosen = variants()
    rates: dict[str, list[float]] = {name: [] for name in chosen}
    for number in range(1, rounds + 1):
        for name, variant in chosen.items():
            with variant(url):
                rates[name].append(run_once(url, count))
            print(f"  round {number}: {name:<36} {rates[name][-1]:>9,.0f} jobs/s", flush=True)
    return rates


def table(rates: dict[str, list[float]]) -> list[dict[str, object]]:
    rows = []
    for name, values in rates.items():
        row = against_baseline(values, rates["as shipped"])
        rows.append(
            {
                "variant": name,
                "median_jobs_per_s": row.median,
                "range": [row.low, row.high],
                "ratio_to_shipped": row.ratio,
                "ratio_range": [row.ratio_low, row.ratio_high],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.write_costs", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2,000 jobs")
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)
    rounds, count = (2, 2_000) if args.quick else (args.rounds, args.count)
    if rounds < 1 or count < 1:
        parser.error("--rounds and --count must be at least 1")
    with scratch(server_url()) as db:
        print(f"drain of {count:,} no-op jobs, {rounds} interleaved rounds ({db.name})")
        rows = table(run(db.url, rounds, count))
    print(f"\n{'variant':<36} {'median jobs/s':>14} {'ratio to shipped':>17}  ratio range")
    for row in rows:
        low, high = row["ratio_range"]  # type: ignore[misc]
        print(
            f"{row['variant']:<36} {row['median_jobs_per_s']:>14,.0f} "
            f"{row['ratio_to_shipped']:>17.2f}  [{low:.2f}, {high:.2f}]"
        )
    path = write(
        args.output, "write-costs", db.server_version, rounds=rounds, count=count, rows=rows
    )
    print(f"results written to {path}")


if __name__ == "__main__":
    sys.exit(main())
