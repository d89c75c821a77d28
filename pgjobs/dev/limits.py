"""PostgreSQL's own limits for two of the workloads (pgjobs/dev/workloads.py), measured
with the same clock rules on the same table, so that a queue's figures can be read
against what the server and its disk allow at that moment.

- single: one-row autocommit inserts into `jobs`, one after the other on one connection;
  each commit waits for its WAL flush, as every durable enqueue does.
- latency: the two durable commits no PostgreSQL queue can start a job without — the
  enqueue's insert and the claim's update of that row — back to back on one connection,
  paced like the latency workload (the machine is idle between jobs), client clock from
  before the insert to the update's return. A queue adds to it at least the wake-up of
  its worker.

Run one as a command (prints one JSON object), as the peers harness does:
`python -m pgjobs.dev.limits latency --database-url URL --count 300`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg

from pgjobs.dev.workloads import LATENCY_RATE, command_arguments, percentile
from pgjobs.ids import uuid7
from pgjobs.queries import query

Result = dict[str, Any]


def single(database_url: str, count: int) -> Result:
    """`count` one-row inserts into `jobs`, each its own commit."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(query("bench_truncate"))
        began = time.perf_counter()
        for n in range(count):
            conn.execute(query("bench_insert_one"), {"id": uuid7(), "n": n})
        elapsed = time.perf_counter() - began
    return {"jobs_per_s": count / elapsed, "seconds": elapsed}


def latency(database_url: str, count: int, rate: float = LATENCY_RATE) -> Result:
    """An insert and an update of the same row, each its own commit, `count` times at
    `rate` per second; milliseconds from before the insert to the update's return."""
    values = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(query("bench_truncate"))
        interval = 1 / rate
        for n in range(count):
            next_at = time.perf_counter() + interval
            job = uuid7()
            began = time.perf_counter()
            conn.execute(query("bench_insert_one"), {"id": job, "n": n})
            conn.execute(query("bench_start_one"), {"id": job})
            values.append((time.perf_counter() - began) * 1000)
            time.sleep(max(0.0, next_at - time.perf_counter()))
    values.sort()
    return {f"p{pct}_ms": percentile(values, pct) for pct in (50, 95, 99)}


LIMITS: dict[str, Callable[[str, int], Result]] = {"single": single, "latency": latency}


def main(argv: list[str] | None = None) -> None:
    args = command_arguments("python -m pgjobs.dev.limits", LIMITS, argv)
    json.dump(LIMITS[args.workload](args.database_url, args.count), sys.stdout)
    print()


if __name__ == "__main__":
    main()
