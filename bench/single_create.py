"""Benchmark: where a single `create` stands against PostgreSQL's own one-row inserts.

Four loops of one-row autocommit inserts into `jobs`, each commit waiting for its WAL
flush, in interleaved rounds on one scratch database (each round runs a block of every
loop in turn, so drift of the machine spreads over all four):

- `insert, psycopg sync`: the bare insert of `python -m pgjobs.dev.limits single`, the
  "PostgreSQL alone" of `bin/bench --peers`;
- `insert, psycopg asyncio`: the same statement through psycopg's asyncio connection on
  the default event loop, which is what `App.create` runs on;
- `App.create`: the public API, defaults, one call per job;
- `App.create_sync`: the same through the synchronous pool.

The table gives each loop's median rate and the median of its per-round ratio to the
sync insert loop: how much of a create's distance to PostgreSQL's own loop is the
asyncio driver's, and how much is pgjobs'.

Usage:

    python -m bench.single_create [--rounds 15] [--block 200] [--quick]

`--quick` (2 rounds of 20) is a smoke run. The server is PGJOBS_BENCH_DATABASE_URL,
else PGJOBS_TEST_DATABASE_URL, else DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.common import ROOT, against_baseline, scratch, server_url, write
from pgjobs.dev import limits, workloads

LOOPS = ("insert, psycopg sync", "insert, psycopg asyncio", "App.create", "App.create_sync")


class Loops:
    """The four loops on one database; each runs `block` inserts and returns jobs/s."""

    def __init__(self, url: str, runner: asyncio.Runner) -> None:
        self.runner = runner
        self.app = workloads.user_app(url)
        self.sync = psycopg.connect(url, autocommit=True)
        self.aio = runner.run(psycopg.AsyncConnection.connect(url, autocommit=True))
        # Every connection is open and has run its statement before the first block.
        self.runner.run(self.app.create(workloads.NOOP, {}))
        self.app.create_sync(workloads.NOOP, {})

    def run(self, loop: str, block: int) -> float:
        chosen: dict[str, Callable[[int], None]] = {
            LOOPS[0]: self._insert_sync,
            LOOPS[1]: lambda n: self.runner.run(self._insert_async(n)),
            LOOPS[2]: lambda n: self.runner.run(self._create(n)),
            LOOPS[3]: self._create_sync,
        }
        began = time.perf_counter()
        chosen[loop](block)
        return block / (time.perf_counter() - began)

    def _insert_sync(self, block: int) -> None:
        limits.insert_rows(self.sync, block)

    async def _insert_async(self, block: int) -> None:
        await limits.insert_rows_async(self.aio, block)

    async def _create(self, block: int) -> None:
        for n in range(block):
            await self.app.create(workloads.NOOP, {"n": n})

    def _create_sync(self, block: int) -> None:
        for n in range(block):
            self.app.create_sync(workloads.NOOP, {"n": n})

    def close(self) -> None:
        self.sync.close()
        self.runner.run(self.aio.close())
        self.runner.run(self.app.close())


def measure(url: str, rounds: int, block: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {loop: [] for loop in LOOPS}
    with asyncio.Runner() as runner:
        loops = Loops(url, runner)
        try:
            for r in range(1, rounds + 1):
                for loop in LOOPS:
                    rates[loop].append(loops.run(loop, block))
                print(
                    f"  round {r}/{rounds}: "
                    + ", ".join(f"{loop} {rates[loop][-1]:,.0f}/s" for loop in LOOPS),
                    flush=True,
                )
        finally:
            loops.close()
    return rates


def summarize(rates: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    table = {}
    for loop, values in rates.items():
        row = against_baseline(values, rates[LOOPS[0]])
        table[loop] = {
            "median_jobs_per_s": row.median,
            "min_jobs_per_s": row.low,
            "max_jobs_per_s": row.high,
            "ratio_to_sync_insert": row.ratio,
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.single_create")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=200, help="inserts per loop per round")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 20: a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    rounds, block = (2, 20) if args.quick else (args.rounds, args.block)
    if rounds < 1 or block < 1:
        parser.error("--rounds and --block must be at least 1")
    with scratch(server_url()) as db:
        print(f"single inserts: {rounds} rounds of {block} per loop, interleaved", flush=True)
        rates = measure(db.url, rounds, block)
    table = summarize(rates)
    print(f"\n{'loop':<26} {'median jobs/s':>14} {'ratio to sync insert':>21}")
    for loop, row in table.items():
        print(f"{loop:<26} {row['median_jobs_per_s']:>14,.0f} {row['ratio_to_sync_insert']:>21.2f}")
    path = write(
        args.out,
        "single_create",
        db.server_version,
        rounds=rounds,
        block=block,
        rates=rates,
        summary=table,
    )
    print(f"\nrecord: {path}")


if __name__ == "__main__":
    main()
