"""Benchmark: the drain workload through PgBouncer in transaction pooling mode against the
same workload straight to PostgreSQL, in interleaved rounds of one run.

Each round runs `python -m pgjobs.dev.workloads drain` once per path, in an order that
rotates from round to round, on one scratch database:

* `direct`: straight to PostgreSQL with JOBS_POOL_MODE=direct (the default);
* `unprepared`: straight to PostgreSQL with JOBS_POOL_MODE=transaction, which tells what
  the transaction mode's connection settings cost (no prepared statements, no generic
  plans) apart from the extra hop;
* `bouncer`: through a private PgBouncer (pgjobs.dev.pgbouncer, `pool_mode =
  transaction`) with JOBS_POOL_MODE=transaction.

Prints each run and the median jobs/s of each path, and writes a JSON record to
bench-results/. Usage:

    bin/bench --bouncer [--count 20000] [--concurrency 10] [--rounds 3] [--pool-size 4]

The server is PGJOBS_BENCH_DATABASE_URL, else PGJOBS_TEST_DATABASE_URL, else DATABASE_URL,
else the local test server. Needs Debian's pgbouncer (bin/ensure-pgbouncer).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT, scratch, server_url, write
from pgjobs.dev.pgbouncer import BINARY, PgBouncer, available


def drain(url: str, mode: str, count: int, concurrency: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "pgjobs.dev.workloads", "drain"]
    command += ["--database-url", url, "--count", str(count), "--concurrency", str(concurrency)]
    env = {**os.environ, "JOBS_POOL_MODE": mode, "LOG_LEVEL": "warning"}
    env.pop("JOBS_REDIS_URL", None)  # PostgreSQL alone on both paths
    out = subprocess.run(
        command, env=env, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="bin/bench --bouncer")
    parser.add_argument("--count", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool-size", type=int, default=4, help="the bouncer's default_pool_size")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    if not available():
        sys.exit(f"error: pgbouncer is not installed ({BINARY}): run bin/ensure-pgbouncer")
    server = server_url()
    paths = {"direct": "direct", "unprepared": "transaction", "bouncer": "transaction"}
    runs: dict[str, list[float]] = {path: [] for path in paths}
    with (
        scratch(server) as db,
        tempfile.TemporaryDirectory(prefix="pgjobs-bouncer-") as tmp,
    ):
        bouncer = PgBouncer(Path(tmp) / "pgbouncer", server, pool_size=args.pool_size)
        bouncer.start()
        try:
            urls = {"direct": db.url, "unprepared": db.url, "bouncer": bouncer.url(db.url)}
            names = list(paths)
            for index in range(args.rounds):
                shift = index % len(names)
                for path in names[shift:] + names[:shift]:
                    result = drain(urls[path], paths[path], args.count, args.concurrency)
                    runs[path].append(result["jobs_per_s"])
                    print(
                        f"round {index + 1} {path:<11} {result['jobs_per_s']:8,.0f} jobs/s "
                        f"({args.count} jobs in {result['seconds']:.2f} s)",
                        flush=True,
                    )
        finally:
            bouncer.stop()
        medians = {path: statistics.median(rates) for path, rates in runs.items()}
        ratio = medians["bouncer"] / medians["direct"]
        print(
            f"median: direct {medians['direct']:,.0f} jobs/s, unprepared "
            f"{medians['unprepared']:,.0f} jobs/s, through PgBouncer (transaction, pool size "
            f"{args.pool_size}) {medians['bouncer']:,.0f} jobs/s = {ratio:.0%} of direct"
        )
        path = write(
            args.out,
            "bouncer",
            db.server_version,
            count=args.count,
            concurrency=args.concurrency,
            pool_size=args.pool_size,
            runs=runs,
            medians=medians,
            ratio=ratio,
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
