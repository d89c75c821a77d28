"""What the benchmark scripts share: which server to use, a scratch database on it, and
the JSON record every script writes to bench-results/."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from pgjobs.dev.bench import scratch_database, with_database

if TYPE_CHECKING:
    import httpx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"

__all__ = [
    "ROOT",
    "Scratch",
    "WorkerProcesses",
    "against_baseline",
    "git_commit",
    "scratch",
    "server_url",
    "timed_get",
    "web_client",
    "with_database",
    "write",
]


def server_url() -> str:
    """PGJOBS_BENCH_DATABASE_URL, else PGJOBS_TEST_DATABASE_URL, else DATABASE_URL."""
    for name in ("PGJOBS_BENCH_DATABASE_URL", "PGJOBS_TEST_DATABASE_URL", "DATABASE_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return DEFAULT_SERVER


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


@dataclass(frozen=True)
class Scratch:
    name: str
    url: str
    server_version: str | None


@contextmanager
def scratch(server: str, *, keep: bool = False) -> Iterator[Scratch]:
    """A database with the pgjobs schema beside `server`'s, dropped afterwards
    (unless `keep`)."""
    with psycopg.connect(server, autocommit=True) as admin:
        version = admin.execute("SHOW server_version").fetchone()
    with scratch_database(server, keep=keep) as url:
        name = url.rsplit("/", 1)[-1]
        yield Scratch(name, url, version[0] if version else None)


def write(out: Path, benchmark: str, postgres: str | None, **fields: Any) -> Path:
    """The run's JSON record, with the machine facts every benchmark reports."""
    record = {
        "benchmark": benchmark,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "postgres": postgres,
        "cpus": os.cpu_count(),
        **fields,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{benchmark}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


class WorkerProcesses:
    """`pgjobs worker` processes started from one command and environment (subclasses
    set `command` and `env`): started together, stopped together."""

    command: list[str]
    env: dict[str, str]

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, count: int) -> None:
        self.procs = [
            subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL)
            for _ in range(count)
        ]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"worker process {proc.pid} exited with {proc.returncode}")


def summary(samples: list[float]) -> dict[str, float]:
    """Milliseconds samples as min, median, p95, max and count."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "min_ms": round(ordered[0], 1),
        "median_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(p95, 1),
        "max_ms": round(ordered[-1], 1),
        "n": len(ordered),
    }


@dataclass(frozen=True)
class AgainstBaseline:
    """Rates of interleaved rounds set against those of a baseline measured in the same
    rounds: the ratio of each round's pair, so drift of the machine cancels."""

    median: float
    low: float
    high: float
    ratio: float  # the median of the per-round ratios
    ratio_low: float
    ratio_high: float


def against_baseline(values: list[float], baseline: list[float]) -> AgainstBaseline:
    ratios = [value / base for value, base in zip(values, baseline, strict=True)]
    return AgainstBaseline(
        statistics.median(values),
        min(values),
        max(values),
        statistics.median(ratios),
        min(ratios),
        max(ratios),
    )


@asynccontextmanager
async def web_client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the REST API and dashboard served in this process for the database
    `url`, with the app's lifespan (its pools) around it. Imported here, not at the top:
    the other benchmarks do not load the web stack."""
    import httpx

    from pgjobs.config import load_settings
    from pgjobs.web import create_app

    settings = load_settings({"DATABASE_URL": url, "LOG_LEVEL": "warning"}, env_file=None)
    web = create_app(settings)
    async with web.router.lifespan_context(web):
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client


async def timed_get(
    client: httpx.AsyncClient, path: str, params: dict[str, str] | None = None
) -> tuple[float, httpx.Response]:
    """Milliseconds of one GET that must answer 200, and the response."""
    started = time.perf_counter()
    response = await client.get(path, params=params)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"GET {path} {params}: {response.status_code} {response.text[:300]}")
    return elapsed, response
