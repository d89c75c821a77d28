"""The four workloads a user measures, through the public API with default settings and
timed by the client's wall clock. `pgjobs bench` reports them, and the peers harness
(bench/peers/) runs the same workloads for pgjobs and for each peer.

- drain: `count` no-op jobs created beforehand; the clock runs from just before the
  worker is started (`App.worker(queues=["default"], concurrency=…)`, maintenance on,
  built-in types registered) until every job is recorded done in the database.
- latency: an idle worker in the same process; after one untimed job, the clock runs
  from just before `create()` to the first line of the handler.
- bulk: `create_many` of `count` jobs, building each job (`App.build`) inside the clock.
- single: `count` calls of `create()` one after the other on one connection.

Each workload empties the job tables of the database it is given: the peers harness
gives it a scratch database. Run one as a command (prints one JSON object), as the peers
harness does:
`python -m pgjobs.dev.workloads drain --database-url URL --count 20000`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from typing import Any, NoReturn

import psycopg
from psycopg.rows import dict_row

from pgjobs.app import App
from pgjobs.queries import query

NOOP = "bench-noop"
LATENCY = "bench-latency"
LATENCY_RATE = 50.0  # jobs per second in the latency workload: the worker idles between
DONE_POLL = 0.005  # how often the drain looks whether every job is recorded done

Result = dict[str, Any]


def user_app(database_url: str) -> App:
    """An App as a user makes one: defaults from the environment, built-in types on."""
    app = App(database_url=database_url)

    @app.handler(NOOP)
    async def noop(ctx: Any, payload: Any) -> None:
        return None

    return app


# The workloads' own connections prepare nothing, so they also run through a
# transaction-mode PgBouncer (JOBS_POOL_MODE=transaction in the environment).
def empty_tables(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True, prepare_threshold=None) as conn:
        conn.execute(query("bench_truncate"))
        conn.execute(query("bench_vacuum"))


def done_poll_prepare_threshold(app: App) -> int | None:
    """The done question is asked every DONE_POLL: prepared at once where it can be, as
    planning it costs the server more than running it (not through a transaction-mode
    pooler, which cannot keep a prepared statement)."""
    return None if app.settings.transaction_pooling else 0


def analyze(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True, prepare_threshold=None) as conn:
        conn.execute(query("bench_analyze"))


async def prefill(app: App, database_url: str, count: int) -> None:
    """`count` queued no-op jobs, the table then analyzed (as autovacuum keeps a table in
    use; the drains' plans should not depend on whether it came by)."""
    await app.create_many([app.build(NOOP, {}) for _ in range(count)])
    analyze(database_url)


async def _unfinished(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether a job is still pending or running."""
    row = await (await conn.execute(query("bench_any_unfinished"))).fetchone()
    return bool(row and row["unfinished"])


async def drain(
    database_url: str, count: int, concurrency: int = 10, *, keep_table: bool = False
) -> Result:
    """Jobs per second from worker start until all `count` jobs are recorded done.
    `keep_table`: leave the jobs already there (finished ones, for a large-table run);
    the database-timestamp figure then covers them too and is left out."""
    if not keep_table:
        empty_tables(database_url)
    app = user_app(database_url)
    try:
        await prefill(app, database_url, count)
        async with await psycopg.AsyncConnection.connect(
            database_url,
            autocommit=True,
            row_factory=dict_row,
            prepare_threshold=done_poll_prepare_threshold(app),
        ) as conn:
            began = time.perf_counter()
            async with app.worker(queues=["default"], concurrency=concurrency):
                while await _unfinished(conn):  # noqa: ASYNC110 - the database decides
                    await asyncio.sleep(DONE_POLL)
                elapsed = time.perf_counter() - began
            window = await (await conn.execute(query("bench_drain_window"))).fetchone()
    finally:
        await app.close()
    result: Result = {"jobs_per_s": count / elapsed, "seconds": elapsed}
    if window is not None and not keep_table:
        # Secondary, from database timestamps: first start to last completion.
        result["db_jobs_per_s"] = float(window["n"]) / max(float(window["s"] or 0), 1e-6)
    return result


async def latency(database_url: str, count: int, rate: float = LATENCY_RATE) -> Result:
    """Client clock before `create()` to the handler's first line, with an idle worker,
    `count` jobs created one at a time at `rate` per second."""
    empty_tables(database_url)
    app = user_app(database_url)
    began: dict[int, float] = {}
    ran: dict[int, float] = {}
    arrived = asyncio.Event()

    @app.handler(LATENCY)
    async def record(ctx: Any, payload: Any) -> None:
        ran[payload["k"]] = time.perf_counter()
        arrived.set()

    try:
        async with app.worker(queues=["default"], concurrency=10) as worker:
            await worker.wait_listening()
            # One job through first, untimed, as every contender's latency does: the
            # client's first connection (~20 ms) and the worker's first run are not the
            # figure; counted, it alone was one of the three slowest samples of 300.
            await app.create(LATENCY, {"k": -1})
            await _wait_until(partial(operator.contains, ran, -1), arrived, 10.0)
            interval = 1 / rate
            for k in range(count):
                next_at = time.perf_counter() + interval
                began[k] = time.perf_counter()
                await app.create(LATENCY, {"k": k})
                await _wait_until(partial(operator.contains, ran, k), arrived, 10.0)
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    finally:
        await app.close()
    values = sorted((ran[k] - began[k]) * 1000 for k in began)
    return {
        "p50_ms": percentile(values, 50),
        "p95_ms": percentile(values, 95),
        "p99_ms": percentile(values, 99),
    }


async def _wait_until(done: Callable[[], bool], changed: asyncio.Event, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while not done():
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError("a latency job did not start within 10 s")
        changed.clear()
        await asyncio.wait_for(changed.wait(), remaining)


async def bulk(database_url: str, count: int) -> Result:
    """`create_many` of `count` jobs, building them inside the clock."""
    empty_tables(database_url)
    app = user_app(database_url)
    try:
        await app.create(NOOP, {})  # the pool's first connection is not the figure
        began = time.perf_counter()
        await app.create_many([app.build(NOOP, {"n": i}) for i in range(count)])
        elapsed = time.perf_counter() - began
    finally:
        await app.close()
    return {"jobs_per_s": count / elapsed, "seconds": elapsed}


async def single(database_url: str, count: int) -> Result:
    """`count` single creates, one after the other."""
    empty_tables(database_url)
    app = user_app(database_url)
    try:
        await app.create(NOOP, {})
        began = time.perf_counter()
        for i in range(count):
            await app.create(NOOP, {"n": i})
        elapsed = time.perf_counter() - began
    finally:
        await app.close()
    return {"jobs_per_s": count / elapsed, "seconds": elapsed}


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


WORKLOADS: dict[str, Callable[..., Coroutine[Any, Any, Result]]] = {
    "drain": drain,
    "latency": latency,
    "bulk": bulk,
    "single": single,
}


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments give one line naming the problem, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def command_arguments(
    prog: str, workloads: Iterable[str], argv: list[str] | None
) -> argparse.Namespace:
    """The protocol every contender of the peers' benchmark speaks (bench/peers/run.py):
    a workload name, --database-url, --count and --concurrency."""
    parser = OneLineParser(prog=prog)
    parser.add_argument("workload", choices=sorted(workloads))
    parser.add_argument(
        "--database-url",
        required=True,
        help="a scratch database with the schema: its job tables are emptied first",
    )
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=10, help="drain only")
    args = parser.parse_args(argv)
    for name in ("count", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def emit(prog: str, measure: Callable[[], Result]) -> None:
    """Print `measure`'s result as one JSON line. A database that cannot be reached is
    one line on stderr and exit code 2, as bad arguments are."""
    try:
        result = measure()
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{prog}: error: {reason}", file=sys.stderr)
        sys.exit(2)
    json.dump(result, sys.stdout)
    print()


def main(argv: list[str] | None = None) -> None:
    prog = "python -m pgjobs.dev.workloads"
    args = command_arguments(prog, WORKLOADS, argv)
    options: dict[str, Any] = {"count": args.count}
    if args.workload == "drain":
        options["concurrency"] = args.concurrency
    emit(prog, lambda: asyncio.run(WORKLOADS[args.workload](args.database_url, **options)))


if __name__ == "__main__":
    main()
