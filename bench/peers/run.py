"""`bin/bench --peers`: pgjobs and peer job queues through the same four workloads in one
run, interleaved, then one comparison table.

The workloads and their clock rules are pgjobs/dev/workloads.py's; every contender is a
command speaking its protocol (workload name, --database-url or --redis-url, --count,
--concurrency -> one JSON object on stdout). Each round runs, per workload, pgjobs, peer 1,
pgjobs, peer 2, ... so that drift on a shared machine spreads over everyone; every pgjobs
sample counts. Peers install themselves on first use under .cache/bench-peers/ (npm ci
from bench/peers/package-lock.json; a virtualenv from pgqueuer-requirements.txt).

    python -m bench.peers.run [--rounds 3] [--peers graphile-worker,bullmq,pgqueuer|none]
                              [--quick] [--drain-count N] ... [--out bench-results]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg import sql

from bench.common import ROOT, git_commit, server_url, with_database, write
from pgjobs._version import __version__ as pgjobs_version
from pgjobs.dev.bench import scratch_database
from pgjobs.dev.workloads import OneLineParser

HERE = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "bench-peers"
NODE_DIR = CACHE / "node"
PGQUEUER_VENV = CACHE / "pgqueuer-venv"
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
WORKLOADS = ("drain", "latency", "bulk", "single")
PEERS = ("graphile-worker", "graphile-worker-q500", "bullmq", "pgqueuer")
# graphile-worker's local queue: its docs' starting point (concurrency + 1), and the 500
# of its performance page's fastest figures (bench/peers/graphile_worker.js).
GRAPHILE_Q500 = {"BENCH_LOCAL_QUEUE_SIZE": "500"}
# Limits (pgjobs/dev/limits.py), each a column beside the queues, never a peer: PostgreSQL's
# own (single, latency), and pgjobs' claim and finish statements with no worker (drain).
ALONE = "PostgreSQL alone"
SQL_ALONE = "pgjobs SQL alone"
LIMITS = (ALONE, SQL_ALONE)
RUN_TIMEOUT = 900.0

Result = dict[str, Any]


@dataclass(frozen=True)
class Counts:
    drain: int = 20_000
    latency: int = 300
    bulk: int = 20_000
    single: int = 2_000

    @classmethod
    def quick(cls) -> Counts:
        return cls(drain=1_000, latency=30, bulk=1_000, single=100)


# ------------------------------------------------------------------ contenders


@dataclass
class Contender:
    name: str
    store: str  # "postgres" or "redis"
    argv: list[str]  # the command before the workload's arguments
    env: dict[str, str] = field(default_factory=dict)
    target: str = ""  # its scratch database URL or Redis URL, set once prepared
    workloads: tuple[str, ...] = WORKLOADS  # the ones it runs

    def command(self, workload: str, count: int, concurrency: int) -> list[str]:
        flag = "--redis-url" if self.store == "redis" else "--database-url"
        return [
            *self.argv,
            workload,
            flag,
            self.target,
            "--count",
            str(count),
            "--concurrency",
            str(concurrency),
        ]


def pgjobs_contender() -> Contender:
    return Contender("pgjobs", "postgres", [sys.executable, "-m", "pgjobs.dev.workloads"])


def alone_contender() -> Contender:
    """PostgreSQL's own one-row insert loop (single) and two durable one-row commits
    paced like the latency workload, on a database with pgjobs' schema (same table)."""
    argv = [sys.executable, "-m", "pgjobs.dev.limits"]
    return Contender(ALONE, "postgres", argv, workloads=("latency", "single"))


def sql_alone_contender() -> Contender:
    """pgjobs' own claim and finish statements on 4 connections, 100 jobs a claim, with
    no worker between them: the drain's bound from the server's side."""
    argv = [sys.executable, "-m", "pgjobs.dev.limits"]
    return Contender(SQL_ALONE, "postgres", argv, workloads=("drain",))


def node_contender(name: str, script: str) -> Contender:
    node = _require_tool("node")
    env = {"NODE_PATH": str(NODE_DIR / "node_modules")}
    return Contender(name, "postgres", [node, str(HERE / script)], env)


def peer_contender(name: str) -> Contender:
    if name == "graphile-worker":
        return node_contender(name, "graphile_worker.js")
    if name == "graphile-worker-q500":
        q500 = node_contender(name, "graphile_worker.js")
        q500.env.update(GRAPHILE_Q500)
        return q500
    if name == "bullmq":
        bullmq = node_contender(name, "bullmq.js")
        bullmq.store = "redis"
        return bullmq
    python = str(PGQUEUER_VENV / "bin" / "python")
    return Contender(name, "postgres", [python, str(HERE / "pgqueuer_workloads.py")])


def _require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"error: the Node peers need `{tool}` on PATH")
    return path


# ------------------------------------------------------------------ installs


def install_node_peers() -> None:
    """`npm ci` into the cache when the lock file there is not bench/peers' own."""
    lock = HERE / "package-lock.json"
    installed = NODE_DIR / "package-lock.json"
    if (NODE_DIR / "node_modules").is_dir() and _same(lock, installed):
        return
    print("== installing the Node peers (npm ci) into .cache/bench-peers/node", flush=True)
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "package.json", NODE_DIR / "package.json")
    shutil.copy(lock, installed)
    # Install scripts stay off: the only one is msgpackr-extract's optional native
    # build, and BullMQ falls back to msgpackr's JavaScript without it.
    npm = _require_tool("npm")
    _check_call([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], NODE_DIR)


def install_pgqueuer() -> None:
    """Its own virtualenv in the cache, never the project's."""
    requirements = HERE / "pgqueuer-requirements.txt"
    stamp = PGQUEUER_VENV / ".installed-from"
    if _same(requirements, stamp):
        return
    print("== installing pgqueuer into .cache/bench-peers/pgqueuer-venv", flush=True)
    _check_call([_base_python(), "-m", "venv", "--clear", str(PGQUEUER_VENV)], ROOT)
    pip = [str(PGQUEUER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    _check_call([*pip, "--disable-pip-version-check", "-r", str(requirements)], ROOT)
    shutil.copy(requirements, stamp)


def _base_python() -> str:
    # A virtualenv's interpreter makes a virtualenv of its base Python.
    return getattr(sys, "_base_executable", sys.executable)


def _same(a: Path, b: Path) -> bool:
    return b.is_file() and a.read_bytes() == b.read_bytes()


def _check_call(argv: list[str], cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv[:3])} failed:\n{done.stderr[-2000:]}")


# ------------------------------------------------------------------ stores


@contextmanager
def empty_database(server: str, label: str) -> Iterator[str]:
    """A database of its own for a peer to install its schema in, dropped afterwards."""
    name = f"pgjobs_bench_peer_{label.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(name)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        yield with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def prepare_stores(
    stack: ExitStack, contenders: Sequence[Contender], server: str, redis_url: str
) -> None:
    for contender in contenders:
        if contender.store == "redis":
            contender.target = redis_url
        elif contender.name in ("pgjobs", *LIMITS):
            contender.target = stack.enter_context(scratch_database(server))
        else:
            contender.target = stack.enter_context(empty_database(server, contender.name))


def flush_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


# ------------------------------------------------------------------ running


def run_one(contender: Contender, workload: str, count: int, concurrency: int) -> Result:
    done = subprocess.run(
        contender.command(workload, count, concurrency),
        cwd=ROOT,
        env={**os.environ, **contender.env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(
            f"error: {contender.name} {workload} exited {done.returncode}:\n"
            f"{done.stderr.strip()[-2000:]}"
        )
    result: Result = json.loads(lines[-1])
    return result


def schedule(contenders: Sequence[Contender], workload: str) -> list[Contender]:
    """pgjobs before each other contender that runs `workload`: pgjobs, peer 1, pgjobs,
    peer 2, ... (pgjobs alone when no other runs it)."""
    pgjobs, *others = contenders
    others = [c for c in others if workload in c.workloads]
    if not others:
        return [pgjobs]
    return [c for other in others for c in (pgjobs, other)]


def summary_of(result: Result) -> str:
    if "p50_ms" in result:
        return " ".join(f"{k[:-3]} {result[k]:.1f} ms" for k in ("p50_ms", "p95_ms", "p99_ms"))
    return f"{result['jobs_per_s']:,.0f} jobs/s"


def run_rounds(
    contenders: Sequence[Contender],
    counts: Counts,
    rounds: int,
    concurrency: int,
    redis_url: str | None,
) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    for r in range(1, rounds + 1):
        if redis_url:
            flush_redis(redis_url)
        for workload in WORKLOADS:
            count = getattr(counts, workload)
            for contender in schedule(contenders, workload):
                result = run_one(contender, workload, count, concurrency)
                samples.append(
                    {"round": r, "workload": workload, "contender": contender.name, **result}
                )
                print(
                    f"  round {r}/{rounds}  {workload:<8} {contender.name:<16} "
                    f"{summary_of(result)}",
                    flush=True,
                )
    return samples


# ------------------------------------------------------------------ table


@dataclass(frozen=True)
class Row:
    label: str
    workload: str
    metric: str
    higher_is_better: bool


def rows_for(counts: Counts, concurrency: int) -> list[Row]:
    return [
        Row(f"drain {_k(counts.drain)} c{concurrency} jobs/s", "drain", "jobs_per_s", True),
        Row(f"latency p50 ms ({counts.latency} jobs)", "latency", "p50_ms", False),
        Row("latency p95 ms", "latency", "p95_ms", False),
        Row("latency p99 ms", "latency", "p99_ms", False),
        Row(f"bulk {_k(counts.bulk)} jobs/s", "bulk", "jobs_per_s", True),
        Row(f"single {_k(counts.single)} jobs/s", "single", "jobs_per_s", True),
    ]


def _k(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def summarize(
    samples: Sequence[dict[str, Any]], rows: Sequence[Row], names: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """{row label: {contender: {median, min, max, n}}} over every sample."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        out[row.label] = {}
        for name in names:
            values = [
                float(s[row.metric])
                for s in samples
                if s["workload"] == row.workload and s["contender"] == name
            ]
            if values:
                out[row.label][name] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "n": len(values),
                }
    return out


def ratio_cell(row: Row, cells: dict[str, dict[str, float]]) -> str:
    peers = {name: v["median"] for name, v in cells.items() if name not in ("pgjobs", *LIMITS)}
    if "pgjobs" not in cells or not peers:
        return "-"
    choose: Callable[..., str] = max if row.higher_is_better else min
    best = choose(peers, key=lambda name: peers[name])
    return f"{cells['pgjobs']['median'] / peers[best]:.2f}x vs {best}"


def render(
    rows: Sequence[Row], summary: dict[str, dict[str, dict[str, float]]], names: Sequence[str]
) -> str:
    header = ["workload", *names, "pgjobs / best peer", "pgjobs / limit"]
    body = []
    for row in rows:
        cells = summary[row.label]
        body.append(
            [
                row.label,
                *(_cell(cells.get(name), row.higher_is_better) for name in names),
                ratio_cell(row, cells),
                limit_ratio_cell(cells),
            ]
        )
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def joined(line: Sequence[str]) -> str:
        return " | ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)).rstrip()

    lines = [joined(header), "-+-".join("-" * w for w in widths), *map(joined, body)]
    lines.append(
        "cells: median (min-max) over rounds. 'pgjobs / best peer': pgjobs median / best"
        " peer median; jobs/s: higher is better, so > 1 favours pgjobs; latency: lower is better,"
        " so < 1 favours pgjobs."
        f" Limits (pgjobs/dev/limits.py), never peers: {ALONE}, the same table with no"
        " queue: single is its one-row insert loop, latency two durable one-row commits"
        f" paced alike; {SQL_ALONE}, pgjobs' claim and finish statements on 4"
        " connections, 100 jobs a claim, with no worker: the drain's bound. 'pgjobs /"
        " limit' divides pgjobs' median by the limit's median."
    )
    return "\n".join(lines)


def limit_ratio_cell(cells: dict[str, dict[str, float]]) -> str:
    limit = next((name for name in LIMITS if name in cells), None)
    if "pgjobs" not in cells or limit is None:
        return "-"
    return f"{cells['pgjobs']['median'] / cells[limit]['median']:.2f}x {limit}"


def _cell(value: dict[str, float] | None, throughput: bool) -> str:
    if value is None:
        return "-"
    fmt = "{:,.0f}" if throughput else "{:.1f}"
    low, high = fmt.format(value["min"]), fmt.format(value["max"])
    return f"{fmt.format(value['median'])} ({low}-{high})"


# ------------------------------------------------------------------ versions


def versions(contenders: Sequence[Contender], server: str, redis_url: str | None) -> Result:
    with psycopg.connect(server) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    found: Result = {
        "pgjobs": pgjobs_version,
        "pgjobs_commit": git_commit(),
        "postgresql": row[0] if row else None,
    }
    names = {c.name for c in contenders}
    if names & {"graphile-worker", "graphile-worker-q500", "bullmq"}:
        found["node"] = _output([_require_tool("node"), "--version"])
        for package in ("graphile-worker", "bullmq", "ioredis"):
            meta = NODE_DIR / "node_modules" / package / "package.json"
            found[package] = json.loads(meta.read_text())["version"]
    if "pgqueuer" in names:
        found["pgqueuer"] = _output(
            [
                str(PGQUEUER_VENV / "bin" / "python"),
                "-c",
                "import importlib.metadata as m;"
                " print(m.version('pgqueuer'), 'asyncpg', m.version('asyncpg'))",
            ]
        )
    if redis_url:
        client = redis.Redis.from_url(redis_url)
        try:
            found["redis"] = client.info("server")["redis_version"]
        finally:
            client.close()
    return found


def _output(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="bin/bench --peers", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, help="rounds (3; 1 with --quick)")
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated, from {', '.join(PEERS)}; 'none' for pgjobs alone",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, 1 round")
    for workload in WORKLOADS:
        parser.add_argument(f"--{workload}-count", type=int, metavar="N")
    parser.add_argument("--concurrency", type=int, default=10, help="drain's worker concurrency")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help="BullMQ's (flushed)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)
    args.peer_names = [] if args.peers == "none" else [p for p in args.peers.split(",") if p]
    unknown = [p for p in args.peer_names if p not in PEERS]
    if unknown or (not args.peer_names and args.peers != "none"):
        parser.error(f"--peers: unknown peer {', '.join(unknown) or repr(args.peers)}")
    for name in ("rounds", "concurrency", *(f"{w}_count" for w in WORKLOADS)):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args


def counts_from(args: argparse.Namespace) -> Counts:
    base = Counts.quick() if args.quick else Counts()
    chosen = {w: getattr(args, f"{w}_count") or getattr(base, w) for w in WORKLOADS}
    return Counts(**chosen)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    counts = counts_from(args)
    rounds = args.rounds or (1 if args.quick else 3)
    if {"graphile-worker", "graphile-worker-q500", "bullmq"} & set(args.peer_names):
        install_node_peers()
    if "pgqueuer" in args.peer_names:
        install_pgqueuer()
    contenders = [
        pgjobs_contender(),
        *(peer_contender(p) for p in args.peer_names),
        alone_contender(),
        sql_alone_contender(),
    ]
    redis_url = args.redis_url if "bullmq" in args.peer_names else None
    server = server_url()
    names = [c.name for c in contenders]
    found = versions(contenders, server, redis_url)
    print(f"peers benchmark: {', '.join(names)}; {rounds} round(s); counts {counts}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in found.items()), flush=True)
    with ExitStack() as stack:
        prepare_stores(stack, contenders, server, redis_url or "")
        databases = [
            urlsplit(c.target).path.lstrip("/") for c in contenders if c.store == "postgres"
        ]
        samples = run_rounds(contenders, counts, rounds, args.concurrency, redis_url)
    if redis_url:
        flush_redis(redis_url)  # as the scratch databases are dropped
    rows = rows_for(counts, args.concurrency)
    summary = summarize(samples, rows, names)
    table = render(rows, summary, names)
    print()
    print(table)
    path = write(
        args.out,
        "peers",
        found["postgresql"],
        rounds=rounds,
        concurrency=args.concurrency,
        counts=counts.__dict__,
        contenders=names,
        databases=databases,  # scratch databases, dropped by now
        versions=found,
        load_average=os.getloadavg(),
        samples=samples,
        summary=summary,
        table=table,
    )
    print(f"\nrecord: {path}")


if __name__ == "__main__":
    main()
