"""The fault-injection harness: servers, a ledger, a fleet of real worker processes, a
monitor, and the invariants every scenario must keep.

- `Ledger`: tables in the scenario's own database. `chaos_jobs` remembers every enqueued
  id with its original run_at; the handler (tests/process/chaos/apps/chaos_app.py) writes a
  `chaos_starts` row per run and a `chaos_effects` row committed together with the
  completion through `ctx.complete_in(conn)`, or a `chaos_fenced` row when the fence
  rejected that completion. Rows name the run's host (CHAOS_HOST, see hosts.py).
- `Fleet`: `python -m pgjobs worker --app chaos_app:app` processes (not threads), with
  their output in log files; kill, stop, continue and respawn them.
- `Monitor`: samples, while faults are injected, how long active jobs have been held by
  a silent owner and how old the oldest active job is.
- `Ledger.report()`: the invariants — nothing lost, no duplicate completion, every
  extra run explained by a recorded failure (stalled, timeout, error), no run token used
  twice, attempts <= max_attempts, no start before run_at — plus latency percentiles.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgjobs.app import App
from pgjobs.config import load_settings
from pgjobs.db import install_schema
from pgjobs.dev.services import PrivatePostgres, PrivateRedis, debian_bin_dirs, free_port

APPS = Path(__file__).parent / "apps"
TERMINAL = ("completed", "failed", "cancelled")
NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)
FOREVER = dt.datetime.max.replace(tzinfo=dt.UTC)

# Leases short enough that a rescue takes seconds, not the default 30 s.
LEASE_MS = 2000
SWEEP_MS = 500
BASE_ENV = {
    "JOBS_LOCK_DURATION": str(LEASE_MS),
    "JOBS_STALLED_INTERVAL": str(SWEEP_MS),
    "JOBS_HEARTBEAT_INTERVAL": "400",
    "JOBS_POLL_INTERVAL": "250",
    "JOBS_MAX_STALLED_COUNT": "20",
    "JOBS_RETRY_DELAY": "100",
    "JOBS_SHUTDOWN_GRACE": "5000",
    "LOG_LEVEL": "warning",
}

LEDGER_SQL = """
CREATE TABLE IF NOT EXISTS chaos_jobs (
    job_id uuid PRIMARY KEY,
    run_at timestamptz NOT NULL,
    mode text NOT NULL
);
CREATE TABLE IF NOT EXISTS chaos_starts (
    job_id uuid NOT NULL,
    attempt int NOT NULL,
    pid int NOT NULL,
    host text,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS chaos_effects (
    job_id uuid NOT NULL,
    attempt int NOT NULL,
    pid int NOT NULL,
    host text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS chaos_fenced (
    job_id uuid NOT NULL,
    attempt int NOT NULL,
    pid int NOT NULL,
    host text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS chaos_starts_job_idx ON chaos_starts (job_id);
CREATE INDEX IF NOT EXISTS chaos_jobs_run_at_idx ON chaos_jobs (run_at);
"""

# The ledger rows of jobs that were created: ids that never reached the jobs table (a
# create that failed) yield none, and a row recorded already is left alone.
RECORD_SQL = """
INSERT INTO chaos_jobs (job_id, run_at, mode)
SELECT j.id, j.run_at, m.mode FROM jobs j
JOIN unnest(%s::uuid[], %s::text[]) AS m(id, mode) ON m.id = j.id
ON CONFLICT (job_id) DO NOTHING
"""


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def connect(url: str, name: str = "chaos:test") -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(
        url, autocommit=True, row_factory=dict_row, application_name=name, connect_timeout=5
    )


# ---------------------------------------------------------------- servers


@dataclass
class Cluster:
    """A PostgreSQL cluster the suite owns (Debian's initdb + pg_ctl, as the `postgres`
    system user when run as root), on a free port, in a temporary folder."""

    root: Path
    server: PrivatePostgres
    url: str

    @classmethod
    def available(cls) -> bool:
        return bool(debian_bin_dirs("/usr/lib/postgresql/*/bin"))

    @classmethod
    def start(cls, *, max_connections: int | None = None) -> Cluster:
        """`max_connections`: more than the 200 the private server starts with (set by a
        restart with new options: command-line settings beat postgresql.conf)."""
        bin_dir = debian_bin_dirs("/usr/lib/postgresql/*/bin")[0]
        root = Path(tempfile.mkdtemp(prefix="pgjobs-chaos-"))
        root.chmod(0o755)  # the postgres system user must be able to enter it
        server = PrivatePostgres(bin_dir, root / "data")
        port = free_port()
        url = server.start(port=port)
        cluster = cls(root, server, url)
        if max_connections is not None:
            options = f"-k '' -h 127.0.0.1 -p {port} -c max_connections={max_connections}"
            cluster._restart("fast", options)
        return cluster

    def restart_immediate(self) -> float:
        """`pg_ctl restart -m immediate`: every backend dies without a checkpoint and the
        server replays its WAL on the way up. Returns the seconds it took."""
        return self._restart("immediate")

    def _restart(self, mode: str, options: str | None = None) -> float:
        """`pg_ctl restart -m <mode>`, with the server's last options unless `options`
        are given (pg_ctl reuses postmaster.opts). Returns the seconds it took."""
        began = time.monotonic()
        argv = [
            str(self.server.bin_dir / "pg_ctl"),
            "-D",
            str(self.server.data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "-l",
            str(self.server.data_dir / "server.log"),
            *(["-o", options] if options is not None else []),
            "restart",
        ]
        user = self.server.run_as
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        # Output to DEVNULL, never a pipe: the restarted daemon inherits it.
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            timeout=90,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {self.log_tail()}")
        return time.monotonic() - began

    def log_tail(self, lines: int = 20) -> str:
        log = self.server.data_dir / "server.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Redis:
    """A private redis-server on a free port that can be stopped and started again on
    the same port."""

    root: Path
    server: PrivateRedis
    port: int
    url: str

    @classmethod
    def available(cls) -> bool:
        return shutil.which("redis-server") is not None

    @classmethod
    def start(cls) -> Redis:
        root = Path(tempfile.mkdtemp(prefix="pgjobs-chaos-redis-"))
        server = PrivateRedis(Path(shutil.which("redis-server") or "redis-server"), root)
        port = free_port()
        url = server.start(port=port)
        return cls(root, server, port, url)

    def down(self) -> None:
        self.server.stop()

    def up(self) -> None:
        self.server.start(port=self.port)

    def close(self) -> None:
        try:
            self.server.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class ServerWatch(threading.Thread):
    """A raw connect loop started just before a restart: when the server stopped
    accepting connections and when it accepted them again (monotonic seconds)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True, name="chaos-server-watch")
        self.url = url
        self.down_at: float | None = None  # first refused connect
        self.up_at: float | None = None  # first connect that worked after that
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
            except psycopg.OperationalError:
                if self.down_at is None:
                    self.down_at = time.monotonic()
            else:
                if self.down_at is not None:
                    self.up_at = time.monotonic()
                    return
            time.sleep(0.01)

    def stop(self, timeout: float = 30) -> None:
        """Wait for the server's return, at most `timeout` s."""
        self.join(timeout)
        self._halt.set()


def create_database(admin_url: str, prefix: str = "pgjobs_chaos") -> str:
    """A new database with the pgjobs schema and the ledger; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with connect(admin_url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(admin_url, name)
    with connect(url) as conn:
        install_schema(conn)
        conn.execute(LEDGER_SQL)
    return url


def drop_database(admin_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with connect(admin_url) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# ---------------------------------------------------------------- the fleet


class Fleet:
    """`size` worker processes of the chaos app; a slot whose process died can be
    respawned. Output goes to one log file per slot (appended across respawns)."""

    def __init__(
        self,
        db_url: str,
        size: int,
        *,
        concurrency: int,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        queues: Sequence[str] = ("default",),
        name: str = "worker",
    ) -> None:
        self.name = name
        self.db_url = db_url
        self.size = size
        self.concurrency = concurrency
        self.log_dir = log_dir
        self.queues = list(queues)
        self.env = {**BASE_ENV, **(env or {})}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.spawned = 0
        self.exited_early = 0  # processes found dead when stop() was called

    def environ(self) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("JOBS_") and k not in ("DATABASE_URL", "LOG_LEVEL")
        }
        path = os.pathsep.join(p for p in (str(APPS), base.get("PYTHONPATH", "")) if p)
        return {
            **base,
            "PYTHONPATH": path,
            "DATABASE_URL": self.db_url,
            "CHAOS_HANDLER_POOL": str(self.concurrency + 2),
            **self.env,
        }

    def start(self) -> Fleet:
        for slot in range(self.size):
            self.spawn(slot)
        return self

    def spawn(self, slot: int) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "pgjobs",
            "worker",
            "--app",
            "chaos_app:app",
            "--concurrency",
            str(self.concurrency),
            *self.queues,
        ]
        with open(self.log_path(slot), "ab") as log:
            # cwd: the log folder, so no stray .env is read.
            proc = subprocess.Popen(
                command,
                env=self.environ(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.log_dir,
            )
        self.procs[slot] = proc
        self.spawned += 1
        return proc

    def log_path(self, slot: int) -> Path:
        return self.log_dir / f"{self.name}-{slot}.log"

    def alive(self) -> list[int]:
        return [slot for slot, p in self.procs.items() if p.poll() is None]

    def pid(self, slot: int) -> int:
        return self.procs[slot].pid

    def signal(self, slot: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.procs[slot].send_signal(sig)

    def kill(self, slot: int) -> None:
        self.signal(slot, signal.SIGKILL)
        self.procs[slot].wait(10)

    def respawn_dead(self) -> int:
        dead = [slot for slot, p in self.procs.items() if p.poll() is not None]
        for slot in dead:
            self.spawn(slot)
        return len(dead)

    def stop(self, timeout: float = 30) -> dict[int, int]:
        """SIGTERM (and SIGCONT, in case one is stopped) to all, then wait; kill leftovers."""
        self.exited_early += len(self.procs) - len(self.alive())
        for slot in self.alive():
            self.signal(slot, signal.SIGCONT)
            self.signal(slot, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[int, int] = {}
        for slot, proc in self.procs.items():
            try:
                codes[slot] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[slot] = proc.wait(10)
        return codes

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for path in sorted(self.log_dir.glob(f"{self.name}-*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


# ---------------------------------------------------------------- the ledger


@dataclass
class Report:
    """What a scenario did and whether the invariants held."""

    scenario: str
    jobs: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0  # enqueued ids that are not terminal (or not there) at the end
    duplicate_completed: int = 0  # more than one result or effect for a job
    missing_records: int = 0  # completed without its result/effect, or effect w/o completion
    reexecutions: int = 0  # runs beyond each job's first
    reasons: dict[str, int] = field(default_factory=dict)  # job_failures rows by kind
    unexplained: int = 0  # extra runs not covered by a recorded failure
    token_reuse: int = 0  # two runs with the same (id, attempt)
    over_attempts: int = 0
    early_starts: int = 0  # a run before the job's run_at
    stuck_active: int = 0  # monitor samples beyond lease + sweep
    max_silent_s: float = 0.0  # longest time a job sat with a silent owner
    pickup_p50_ms: float | None = None  # first start - run_at
    pickup_p99_ms: float | None = None
    e2e_p50_ms: float | None = None  # completed_at - run_at
    e2e_p99_ms: float | None = None
    duration_s: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    expect_completed: bool = True
    worker_exits: int = 0  # worker processes that exited before they were told to stop
    resumed_s: float | None = None  # longest wait for a completion after an outage
    exits_allowed: bool = True
    innocents_failed: int = 0  # ordinary jobs that did not complete where all must
    # After each database restart: seconds from the server accepting connections again
    # to the first successful create through the public API, and to the first completion.
    producer_back_s: list[float] = field(default_factory=list)
    worker_back_s: list[float] = field(default_factory=list)

    def violations(self) -> list[str]:
        found = []
        checks = {
            "lost": self.lost,
            "duplicate_completed": self.duplicate_completed,
            "missing_records": self.missing_records,
            "unexplained re-executions": self.unexplained,
            "token_reuse": self.token_reuse,
            "over_attempts": self.over_attempts,
            "early_starts": self.early_starts,
            "stuck_active": self.stuck_active,
            "ordinary jobs failed": self.innocents_failed,
        }
        if self.expect_completed:
            checks["not completed"] = self.jobs - self.completed
        if not self.exits_allowed:
            checks["worker processes exited"] = self.worker_exits
        for name, value in checks.items():
            if value:
                found.append(f"{name}: {value}")
        return found

    def reasons_text(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items())) or "-"

    def recovery_text(self) -> str:
        """ "producer back after p50 / max; worker back after p50 / max" (or "-")."""
        parts = [
            f"{who} back after {_p50_max_ms(values)}"
            for who, values in (("producer", self.producer_back_s), ("worker", self.worker_back_s))
            if values
        ]
        return "; ".join(parts) or "-"

    def faults_text(self) -> str:
        return ", ".join(f"{k} x{v}" for k, v in self.faults.items()) or "-"


def _p50_max_ms(seconds: Sequence[float]) -> str:
    ms = sorted(1000 * x for x in seconds)
    if len(ms) == 1:
        return f"{ms[0]:,.0f} ms"
    return f"{ms[(len(ms) - 1) // 2]:,.0f} / {ms[-1]:,.0f} ms (p50 / max of {len(ms)})"


def assert_invariants(report: Report) -> None:
    problems = report.violations()
    assert not problems, f"{report.scenario}: {problems}\n" + "\n".join(report.notes)


REPORT_SQL = """
WITH s AS (
    SELECT job_id, count(*) AS starts, count(DISTINCT attempt) AS tokens,
           min(started_at) AS first_start
    FROM chaos_starts GROUP BY job_id
),
e AS (SELECT job_id, count(*) AS effects FROM chaos_effects GROUP BY job_id),
r AS (
    SELECT r.job_id, count(*) AS results
    FROM job_results r JOIN chaos_jobs c ON c.job_id = r.job_id GROUP BY r.job_id
),
f AS (
    SELECT f.job_id, count(*) AS failures
    FROM job_failures f JOIN chaos_jobs c ON c.job_id = f.job_id GROUP BY f.job_id
),
per AS (
    SELECT c.job_id, c.mode, c.run_at, j.status, j.attempts, j.max_attempts, j.completed_at,
           coalesce(s.starts, 0) AS starts, coalesce(s.tokens, 0) AS tokens, s.first_start,
           coalesce(e.effects, 0) AS effects, coalesce(r.results, 0) AS results,
           coalesce(f.failures, 0) AS failures
    FROM chaos_jobs c
    LEFT JOIN jobs j ON j.id = c.job_id
    LEFT JOIN s ON s.job_id = c.job_id
    LEFT JOIN e ON e.job_id = c.job_id
    LEFT JOIN r ON r.job_id = c.job_id
    LEFT JOIN f ON f.job_id = c.job_id
    WHERE c.run_at > %(after)s AND c.run_at <= %(until)s
)
SELECT count(*) AS jobs,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status IS NULL OR status NOT IN ('completed', 'failed', 'cancelled'))
           AS lost,
       count(*) FILTER (WHERE results > 1 OR effects > 1) AS duplicate_completed,
       count(*) FILTER (WHERE (status = 'completed' AND results = 0)
                           OR (status = 'completed' AND mode = 'in_tx' AND effects = 0)
                           OR (status IS DISTINCT FROM 'completed'
                               AND (results > 0 OR effects > 0)))
           AS missing_records,
       coalesce(sum(greatest(starts - 1, 0)), 0) AS reexecutions,
       coalesce(sum(greatest(starts - 1 - failures, 0)), 0) AS unexplained,
       count(*) FILTER (WHERE starts > tokens) AS token_reuse,
       count(*) FILTER (WHERE attempts > max_attempts) AS over_attempts,
       count(*) FILTER (WHERE first_start < run_at) AS early_starts,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM first_start - run_at) * 1000) AS pickup_p50_ms,
       percentile_cont(0.99) WITHIN GROUP (
           ORDER BY extract(epoch FROM first_start - run_at) * 1000) AS pickup_p99_ms,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM completed_at - run_at) * 1000)
           FILTER (WHERE status = 'completed') AS e2e_p50_ms,
       percentile_cont(0.99) WITHIN GROUP (
           ORDER BY extract(epoch FROM completed_at - run_at) * 1000)
           FILTER (WHERE status = 'completed') AS e2e_p99_ms
FROM per
"""

# The whole history of the jobs counted as duplicated or missing: when an invariant
# breaks, the report says which runs, effects, results and failures led there.
OFFENDERS_SQL = """
WITH bad AS (
    SELECT c.job_id FROM chaos_jobs c LEFT JOIN jobs j ON j.id = c.job_id
    WHERE c.run_at > %(after)s AND c.run_at <= %(until)s
      AND ((SELECT count(*) FROM job_results r WHERE r.job_id = c.job_id) > 1
           OR (SELECT count(*) FROM chaos_effects e WHERE e.job_id = c.job_id) > 1)
    LIMIT 5
)
SELECT b.job_id, h.at, h.what
FROM bad b CROSS JOIN LATERAL (
    SELECT s.started_at AS at, format('start attempt=%%s pid=%%s', s.attempt, s.pid) AS what
    FROM chaos_starts s WHERE s.job_id = b.job_id
    UNION ALL
    SELECT e.at, format('effect attempt=%%s pid=%%s', e.attempt, e.pid)
    FROM chaos_effects e WHERE e.job_id = b.job_id
    UNION ALL
    SELECT r.completed_at, format('result attempt=%%s %%s', r.attempt, r.result)
    FROM job_results r WHERE r.job_id = b.job_id
    UNION ALL
    SELECT f.failed_at, format('failure attempt=%%s kind=%%s worker=%%s: %%s',
                               f.attempt_number, f.kind, f.worker_id, f.error_message)
    FROM job_failures f WHERE f.job_id = b.job_id
    UNION ALL
    SELECT j.completed_at, format('now status=%%s attempts=%%s max_attempts=%%s',
                                  j.status, j.attempts, j.max_attempts)
    FROM jobs j WHERE j.id = b.job_id
) h
ORDER BY b.job_id, h.at NULLS LAST
"""

REASONS_SQL = """
SELECT f.kind, count(*) AS n
FROM job_failures f JOIN chaos_jobs c ON c.job_id = f.job_id
WHERE c.run_at > %(after)s AND c.run_at <= %(until)s
GROUP BY f.kind ORDER BY f.kind
"""


class Ledger:
    """Enqueues jobs of the chaos app and checks the scenario's invariants."""

    def __init__(self, db_url: str, *, seed: int = 11) -> None:
        self.db_url = db_url
        self.rng = random.Random(seed)
        self.app = App(load_settings({"DATABASE_URL": db_url}, env_file=None), builtin_types=False)
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self.enqueued = 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.db_url, "chaos:producer")
        return self._conn

    def chaos_payload(
        self, *, min_ms: int = 5, max_ms: int = 50, return_share: float = 0.25
    ) -> tuple[dict[str, Any], str]:
        mode = "return" if self.rng.random() < return_share else "in_tx"
        payload: dict[str, Any] = {"ms": self.rng.randint(min_ms, max_ms)}
        if mode == "return":
            payload["complete"] = "return"
        return payload, mode

    def enqueue(
        self,
        count: int,
        *,
        type: str = "chaos",
        delayed_share: float = 0.0,
        max_delay_ms: int = 1000,
        payload: Callable[[], tuple[dict[str, Any], str]] | None = None,
        retry_for: float = 120.0,
        **options: Any,
    ) -> list[uuid.UUID]:
        """Insert `count` jobs (and their ledger rows) in one transaction. A failure is
        retried until `retry_for` seconds pass; an ambiguous commit is resolved by
        looking for the batch's ids, so no batch is inserted twice or lost."""
        make = payload or self.chaos_payload
        jobs, modes = [], []
        for _ in range(count):
            body, mode = make()
            opts = dict(options)
            if delayed_share and self.rng.random() < delayed_share:
                opts["delay"] = self.rng.randint(1, max_delay_ms)
            jobs.append(self.app.build(type, body, **opts))
            modes.append(mode)
        ids = [job.id for job in jobs]
        deadline = time.monotonic() + retry_for
        while True:
            try:
                conn = self._connection()
                if self._has_batch(conn, ids):
                    break
                with conn.transaction():
                    self.app.create_many_sync(jobs, conn=conn)
                    conn.execute(RECORD_SQL, (ids, modes))
                break
            except psycopg.Error:
                self.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.enqueued += count
        return ids

    def record(self, ids: Sequence[uuid.UUID], modes: Sequence[str]) -> None:
        """Add jobs created elsewhere (through the public API) to the ledger."""
        try:
            self._connection().execute(RECORD_SQL, (list(ids), list(modes)))
        except psycopg.Error:
            self.close()
            raise

    @staticmethod
    def _has_batch(conn: psycopg.Connection[dict[str, Any]], ids: list[uuid.UUID]) -> bool:
        row = conn.execute(
            "SELECT count(*) AS n FROM chaos_jobs WHERE job_id = ANY(%s)", (ids[:1],)
        ).fetchone()
        return bool(row and row["n"])

    def counts(self) -> dict[str, int]:
        rows = self.query(
            "SELECT j.status, count(*) AS n FROM chaos_jobs c JOIN jobs j ON j.id = c.job_id "
            "GROUP BY j.status"
        )
        return {r["status"]: int(r["n"]) for r in rows}

    def unfinished(self) -> int:
        """Jobs not yet terminal (the scenario's database holds only ledger jobs; the
        report checks every ledger id against the jobs table)."""
        rows = self.query(
            "SELECT count(*) AS n FROM jobs "
            "WHERE status NOT IN ('completed', 'failed', 'cancelled')"
        )
        return int(rows[0]["n"])

    def wait_finished(self, timeout: float, tick: Callable[[], None] | None = None) -> bool:
        """Wait until every enqueued job is terminal; `tick` runs between looks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.unfinished() == 0:
                    return True
            except psycopg.Error:
                self.close()
            if tick is not None:
                tick()
            time.sleep(0.2)
        return False

    def query(self, text: str, params: Any = None) -> list[dict[str, Any]]:
        try:
            return self._connection().execute(text, params).fetchall()  # type: ignore[arg-type]
        except psycopg.Error:
            self.close()
            raise

    def report(
        self,
        scenario: str,
        *,
        after: dt.datetime | None = None,
        until: dt.datetime | None = None,
        **extra: Any,
    ) -> Report:
        """The invariants over the ledger's jobs, or over those whose run_at lies in
        (`after`, `until`]."""
        bounds = {"after": after or NEVER, "until": until or FOREVER}
        row = self.query(REPORT_SQL, bounds)[0]
        reasons = {r["kind"]: int(r["n"]) for r in self.query(REASONS_SQL, bounds)}
        report = Report(scenario=scenario, reasons=reasons, **extra)
        for name in (
            "jobs",
            "completed",
            "failed",
            "lost",
            "duplicate_completed",
            "missing_records",
            "reexecutions",
            "unexplained",
            "token_reuse",
            "over_attempts",
            "early_starts",
        ):
            setattr(report, name, int(row[name]))
        if report.duplicate_completed:
            report.notes.extend(
                f"duplicate {r['job_id']} {r['at']}: {r['what']}"
                for r in self.query(OFFENDERS_SQL, bounds)
            )
        for name in ("pickup_p50_ms", "pickup_p99_ms", "e2e_p50_ms", "e2e_p99_ms"):
            value = row[name]
            setattr(report, name, None if value is None else round(float(value), 1))
        return report


# ---------------------------------------------------------------- the monitor

MONITOR_SQL = """
SELECT coalesce(max(extract(epoch FROM clock_timestamp()
                            - greatest(j.started_at, w.last_heartbeat_at)))
                FILTER (WHERE w.id IS NULL
                           OR w.last_heartbeat_at
                              < clock_timestamp() - make_interval(secs => %(lease)s)), 0)
           AS silent_s,
       coalesce(max(extract(epoch FROM clock_timestamp() - j.started_at)), 0) AS oldest_s
FROM jobs j LEFT JOIN job_workers w ON w.id = j.worker_id
WHERE j.status = 'active'
"""


class Monitor(threading.Thread):
    """Samples active jobs while faults happen. A job held by a silent owner (dead,
    frozen or gone) must be rescued within lease + sweep; a job held by a live owner
    must not stay active much longer than its handler runs (that would be a claim the
    worker never learned of). Samples inside a `quiet()` window after a database outage
    are skipped: nobody can heartbeat or rescue while the database is away."""

    def __init__(
        self,
        db_url: str,
        *,
        max_run_s: float,
        lease_s: float = LEASE_MS / 1000,
        sweep_s: float = SWEEP_MS / 1000,
        margin_s: float = 3.0,
        interval: float = 0.5,
    ) -> None:
        super().__init__(daemon=True, name="chaos-monitor")
        self.db_url = db_url
        self.lease_s = lease_s
        self.silent_limit = lease_s + sweep_s + margin_s
        self.age_limit = max_run_s + lease_s + sweep_s + margin_s
        self.interval = interval
        self.max_silent_s = 0.0
        self.max_oldest_s = 0.0
        self.stuck = 0
        self.samples = 0
        self.details: list[str] = []
        self._quiet_until = 0.0
        self._halt = threading.Event()

    def quiet(self, seconds: float) -> None:
        self._quiet_until = max(self._quiet_until, time.monotonic() + seconds)

    def resume_after(self, seconds: float) -> None:
        """End the quiet window `seconds` from now, however long it was to last."""
        self._quiet_until = time.monotonic() + seconds

    def run(self) -> None:
        conn: psycopg.Connection[dict[str, Any]] | None = None
        while not self._halt.wait(self.interval):
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = connect(self.db_url, "chaos:monitor")
                row = conn.execute(MONITOR_SQL, {"lease": self.lease_s}).fetchone()
            except psycopg.Error:
                conn = None
                continue
            if row is None or time.monotonic() < self._quiet_until:
                continue
            self.samples += 1
            silent, oldest = float(row["silent_s"]), float(row["oldest_s"])
            self.max_silent_s = max(self.max_silent_s, silent)
            self.max_oldest_s = max(self.max_oldest_s, oldest)
            if silent > self.silent_limit or oldest > self.age_limit:
                self.stuck += 1
                if len(self.details) < 5:
                    self.details.append(
                        f"silent {silent:.1f}s, oldest active {oldest:.1f}s: "
                        + self._describe(conn, min(self.silent_limit, self.age_limit))
                    )
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    @staticmethod
    def _describe(conn: psycopg.Connection[dict[str, Any]], older_than: float) -> str:
        rows = conn.execute(
            "SELECT j.id, j.attempts, j.worker_id, "
            "round(extract(epoch FROM clock_timestamp() - j.started_at)::numeric, 1) AS age, "
            "w.pid, round(extract(epoch FROM clock_timestamp() - w.last_heartbeat_at)::numeric, 1)"
            " AS beat_age, w.in_flight "
            "FROM jobs j LEFT JOIN job_workers w ON w.id = j.worker_id "
            "WHERE j.status = 'active' AND j.started_at < clock_timestamp() - "
            "make_interval(secs => %s) ORDER BY j.started_at LIMIT 3",
            (older_than,),
        ).fetchall()
        return "; ".join(
            f"job {r['id']} attempt {r['attempts']} age {r['age']}s worker pid {r['pid']} "
            f"beat {r['beat_age']}s ago in_flight {r['in_flight']}"
            for r in rows
        )


# ---------------------------------------------------------------- faults


def terminate_backends(url: str, like: str, *, limit: int | None = None) -> int:
    """pg_terminate_backend every connection to `url`'s database whose
    application_name matches `like` (or `limit` of them, picked at random); returns how
    many were terminated."""
    database = urlsplit(url).path.lstrip("/")
    with connect(url, "chaos:killer") as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM ("
            "  SELECT pid FROM pg_stat_activity"
            "  WHERE datname = %s AND application_name LIKE %s AND pid <> pg_backend_pid()"
            "  ORDER BY random() LIMIT %s) AS picked",
            (database, like, limit),
        ).fetchone()
    return int(row["n"]) if row else 0


def pgjobs_connections(url: str, like: str = "pgjobs:%") -> int:
    database = urlsplit(url).path.lstrip("/")
    with connect(url, "chaos:killer") as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity "
            "WHERE datname = %s AND application_name LIKE %s",
            (database, like),
        ).fetchone()
    return int(row["n"]) if row else 0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Ticker:
    """Runs `action` every `every` seconds when `due()` is polled."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.next = time.monotonic() + every

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + self.every
        return True
