"""Scenario 9: a phased run, the way an independent benchmark-and-chaos harness drives a
queue. One database on a cluster the run owns; a producer that creates jobs of a few ms
through the public API at a steady rate; a fleet of `pgjobs worker` processes. Then, in
order, one fault per phase, each with a window before it, a window while it lasts and a
window after it ended:

    steady               no fault: the baseline
    idle-in-transaction  a session opens a REPEATABLE READ transaction, takes a
                         snapshot and sits idle
    high-load            the producer creates at several times its rate
    readers              sessions read the jobs table and views in a loop, and a client
                         polls the REST API's /api/stats
    idle-connections     hundreds of idle connections to the database
    backend-kills        pg_terminate_backend of a random pgjobs connection, twice a
                         second
    restart              pg_ctl restart -m immediate
    worker-kills         SIGKILL a random worker process every few seconds (respawned)

For every window: jobs completed per second and the p99 pickup latency (the job's
run_at, set by the insert, to its handler's first start; both on the database clock).
After each phase's after window, every job created up to then must become terminal:
the phase's jobs are checked for loss, duplicate completion and the other invariants of
`Ledger.report`, and a job still `active` then is counted as left active.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psycopg

from tests.process.chaos.harness import (
    TERMINAL,
    Cluster,
    Fleet,
    Report,
    Ticker,
    connect,
    terminate_backends,
)
from tests.process.chaos.scenarios import (
    ApiProducer,
    Run,
    _wait,
    kill_running_worker,
    restart_and_measure,
    wait_registered,
)
from tests.webserver import running_server

WINDOW_SQL = """
SELECT (SELECT count(*) FROM jobs
        WHERE status = 'completed' AND completed_at > %(lo)s AND completed_at <= %(hi)s)
           AS completed,
       count(*) AS enqueued,
       percentile_cont(0.99) WITHIN GROUP (
           ORDER BY extract(epoch FROM s.first_start - c.run_at) * 1000) AS pickup_p99_ms
FROM chaos_jobs c
CROSS JOIN LATERAL (
    SELECT min(started_at) AS first_start FROM chaos_starts WHERE job_id = c.job_id) s
WHERE c.run_at > %(lo)s AND c.run_at <= %(hi)s
"""

UNFINISHED_SQL = """
SELECT count(*) FILTER (WHERE status <> ALL(%(terminal)s)) AS unfinished,
       count(*) FILTER (WHERE status = 'active') AS active
FROM jobs WHERE created_at <= %(until)s
"""

# The readers' statements: the views an operator's dashboard would poll, and a scan.
READS = (
    "SELECT * FROM queue_stats",
    "SELECT count(*) FROM jobs_active",
    "SELECT * FROM job_type_stats",
    "SELECT status, count(*) FROM jobs GROUP BY status",
)


@dataclass
class Rig:
    """What the faults act on."""

    cluster: Cluster
    db_url: str
    log_dir: Path
    run: Run
    api: ApiProducer
    fleet: Fleet
    rate: float
    high_factor: float
    rng: random.Random
    api_base: str | None  # a `pgjobs server` of the database, for the readers


class Fault:
    """A phase's fault: begun when its `during` window opens, ticked through it, ended
    when the window closes. The base class is the steady phase: no fault."""

    name: ClassVar[str] = "steady"

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    def label(self) -> str:
        return f"none: steady load, {self.rig.rate:g} jobs/s"

    def begin(self) -> None:
        pass

    def tick(self) -> None:
        pass

    def end(self) -> None:
        pass


class IdleTransaction(Fault):
    name = "idle-in-transaction"

    def label(self) -> str:
        return "a session idle in a REPEATABLE READ transaction with a snapshot"

    def begin(self) -> None:
        self.conn = connect(self.rig.db_url, "chaos:idle-in-transaction")
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        self.conn.execute("SELECT count(*) FROM jobs")  # takes the snapshot
        self.rig.run.faults["idle in transaction"] += 1

    def end(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


class HighLoad(Fault):
    name = "high-load"

    def label(self) -> str:
        rig = self.rig
        return f"producer at {rig.high_factor:g}x: {rig.rate * rig.high_factor:g} jobs/s"

    def begin(self) -> None:
        self.rig.api.rate = self.rig.rate * self.rig.high_factor
        self.rig.run.faults["high load"] += 1

    def end(self) -> None:
        self.rig.api.rate = self.rig.rate


class Readers(Fault):
    name = "readers"
    sessions = 4

    def label(self) -> str:
        return (
            f"{self.sessions} sessions reading the jobs table and views in a loop "
            f"({self.reads} reads), a client polling /api/stats ({self.polls} polls)"
        )

    def begin(self) -> None:
        self.reads = self.polls = 0
        self.halt = threading.Event()
        self.threads = [
            threading.Thread(target=self.read, daemon=True) for _ in range(self.sessions)
        ]
        assert self.rig.api_base is not None, "the REST server was not started"
        self.threads.append(
            threading.Thread(target=self.poll, args=(self.rig.api_base,), daemon=True)
        )
        for thread in self.threads:
            thread.start()
        self.rig.run.faults["active readers"] += 1

    def read(self) -> None:
        with connect(self.rig.db_url, "chaos:reader") as conn:
            while not self.halt.is_set():
                for statement in READS:
                    conn.execute(statement).fetchall()
                    self.reads += 1

    def poll(self, base: str) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            while not self.halt.is_set():
                http.get("/api/stats").raise_for_status()
                self.polls += 1

    def end(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(30)


class IdleConnections(Fault):
    name = "idle-connections"
    count = 300

    def label(self) -> str:
        return f"{self.count} idle connections"

    def begin(self) -> None:
        self.conns = [connect(self.rig.db_url, "chaos:idle") for _ in range(self.count)]
        self.rig.run.faults[f"{self.count} idle connections"] += 1

    def end(self) -> None:
        for conn in self.conns:
            conn.close()


class BackendKills(Fault):
    name = "backend-kills"
    per_s = 2

    def label(self) -> str:
        return f"pg_terminate_backend of a random pgjobs connection {self.per_s}x/s"

    def begin(self) -> None:
        self.ticker = Ticker(1 / self.per_s)

    def tick(self) -> None:
        if self.ticker.due():
            killed = terminate_backends(self.rig.db_url, "pgjobs:%", limit=1)
            self.rig.run.faults["pg_terminate_backend"] += killed


class Restart(Fault):
    name = "restart"

    def label(self) -> str:
        run = self.rig.run
        return (
            f"pg_ctl restart -m immediate ({self.took:.1f} s); producer back after "
            f"{run.producer_back_s[-1] * 1000:,.0f} ms, worker after "
            f"{run.worker_back_s[-1] * 1000:,.0f} ms"
        )

    def begin(self) -> None:
        self.took = restart_and_measure(
            self.rig.cluster, self.rig.db_url, self.rig.run, self.rig.api
        )


class WorkerKills(Fault):
    name = "worker-kills"
    every = 2.0

    def label(self) -> str:
        return f"SIGKILL a random running worker every {self.every:g} s, respawned"

    def begin(self) -> None:
        self.ticker = Ticker(self.every)
        self.kill()

    def tick(self) -> None:
        if self.ticker.due():
            self.kill()

    def kill(self) -> None:
        rig = self.rig
        if kill_running_worker(rig.fleet, rig.run.ledger, rig.rng):
            rig.run.faults["kill -9"] += 1


FAULTS: tuple[type[Fault], ...] = (
    Fault,
    IdleTransaction,
    HighLoad,
    Readers,
    IdleConnections,
    BackendKills,
    Restart,
    WorkerKills,
)
PHASES = tuple(fault.name for fault in FAULTS)


@dataclass(frozen=True)
class Window:
    completed_per_s: float  # jobs completed in the window, per second
    pickup_p99_ms: float | None  # run_at -> first handler start of jobs created in it
    enqueued: int  # jobs created in the window

    def text(self) -> str:
        p99 = "-" if self.pickup_p99_ms is None else f"{self.pickup_p99_ms:,.0f} ms"
        return f"{self.completed_per_s:,.0f}/s, p99 {p99}"


@dataclass
class PhaseFigures:
    name: str
    fault: str
    before: Window
    during: Window
    after: Window
    settle_s: float  # after window's end -> every job created up to it terminal
    left_active: int  # of those, still active when the wait ended (target 0)
    report: Report  # the invariants over the jobs created in this phase
    until: dt.datetime  # the phase's jobs: created after the previous phase's, up to this


def phased_run(
    cluster: Cluster,
    db_url: str,
    log_dir: Path,
    *,
    window_s: float,
    rate: float = 150.0,
    high_factor: float = 3.0,
    workers: int = 4,
    concurrency: int = 8,
    only: Sequence[str] = PHASES,
    settle_limit: float = 300.0,
    seed: int = 9,
) -> tuple[Report, list[PhaseFigures]]:
    """Run the phases named in `only` (in their fixed order) with windows of `window_s`;
    returns the whole run's report and one `PhaseFigures` per phase. `settle_limit`:
    how long a phase's jobs may take to finish after its after window (the backlog of
    the high-load phase drains then, so the next phase starts from an empty queue)."""
    unknown = set(only) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phases {sorted(unknown)}; known: {', '.join(PHASES)}")
    faults = [fault for fault in FAULTS if fault.name in only]
    run = Run(
        f"9. phases ({len(faults)}), windows of {window_s:g}s, {rate:g} jobs/s",
        db_url,
        log_dir,
    )
    stack = contextlib.ExitStack()
    # Started before the load: a server starting while the machine is busy may miss its
    # start-up deadline.
    api_base = stack.enter_context(running_server(db_url)) if Readers.name in only else None
    fleet = Fleet(db_url, workers, concurrency=concurrency, log_dir=log_dir).start()
    # Production starts once every worker is up: a backlog from the fleet's start-up
    # would weigh on the first phases' latencies.
    wait_registered(run.ledger, workers)
    api = ApiProducer(db_url, rate=rate)
    api.start()
    rig = Rig(
        cluster, db_url, log_dir, run, api, fleet, rate, high_factor, random.Random(seed), api_base
    )
    figures: list[PhaseFigures] = []
    try:
        _wait(lambda: run.ledger.counts().get("completed", 0) > 0, 60, "the first completion")
        since: dt.datetime | None = None
        for fault in faults:
            figures.append(_phase(fault(rig), since, window_s, settle_limit))
            since = figures[-1].until
        api.stop()
        report = run.finish(fleet, timeout=settle_limit)
    finally:
        if api.is_alive():
            api.stop()
        fleet.kill_all()
        stack.close()
    # Deliberate kills aside, no worker may have exited.
    report.worker_exits = fleet.spawned - workers - run.faults["kill -9"] + fleet.exited_early
    report.exits_allowed = False
    for phase in figures:
        report.notes.extend(f"{phase.name}: {v}" for v in phase.report.violations())
        if phase.left_active:
            report.notes.append(f"{phase.name}: {phase.left_active} jobs left active")
    report.stuck_active += sum(phase.left_active for phase in figures)
    report.notes.append(
        f"{api.created} jobs created through the API, {api.failed_calls} calls failed"
    )
    return report, figures


def _phase(
    fault: Fault, since: dt.datetime | None, window_s: float, settle_limit: float
) -> PhaseFigures:
    rig = fault.rig
    print(f"   phase {fault.name}", flush=True)
    t0 = _now()
    _hold(rig, window_s)
    t1 = _now()
    began = time.monotonic()
    fault.begin()
    _hold(rig, window_s - (time.monotonic() - began), fault.tick)
    fault.end()
    t2 = _now()
    _hold(rig, window_s)
    t3 = _now()
    # The producer pauses while the phase's jobs finish, so that the next phase starts
    # from an empty queue even when a fault left a backlog.
    rig.api.rate = 0
    settle_s, left_active = _settle(rig, t3, settle_limit)
    rig.api.rate = rig.rate
    report = rig.run.ledger.report(f"9. {fault.name}", after=since, until=t3)
    figures = PhaseFigures(
        name=fault.name,
        fault=fault.label(),
        before=_window(rig, t0, t1),
        during=_window(rig, t1, t2),
        after=_window(rig, t2, t3),
        settle_s=round(settle_s, 1),
        left_active=left_active,
        report=report,
        until=t3,
    )
    print(
        f"   {fault.name}: before {figures.before.text()}; during {figures.during.text()}; "
        f"after {figures.after.text()}; left active {left_active}; "
        f"{report.violations() or 'invariants held'}",
        flush=True,
    )
    return figures


def _hold(rig: Rig, seconds: float, tick: Any = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        if not rig.api.is_alive():
            raise AssertionError("the API producer died")
        time.sleep(0.05)


def _settle(rig: Rig, until: dt.datetime, limit: float) -> tuple[float, int]:
    """Wait until every job created up to `until` is terminal and in the ledger; returns
    the seconds it took and how many were still active when the wait ended."""
    began = time.monotonic()
    row: dict[str, Any] = {"active": -1}
    while time.monotonic() - began < limit:
        try:
            row = rig.run.ledger.query(
                UNFINISHED_SQL, {"terminal": list(TERMINAL), "until": until}
            )[0]
        except psycopg.Error:
            time.sleep(0.2)
            continue
        if row["unfinished"] == 0 and rig.api.unrecorded() == 0:
            break
        time.sleep(0.2)
    return time.monotonic() - began, int(row["active"])


def _window(rig: Rig, lo: dt.datetime, hi: dt.datetime) -> Window:
    row = rig.run.ledger.query(WINDOW_SQL, {"lo": lo, "hi": hi})[0]
    seconds = (hi - lo).total_seconds()
    p99 = row["pickup_p99_ms"]
    return Window(
        completed_per_s=round(int(row["completed"]) / seconds, 1) if seconds > 0 else 0.0,
        pickup_p99_ms=None if p99 is None else round(float(p99), 1),
        enqueued=int(row["enqueued"]),
    )


def _now() -> dt.datetime:
    # The database runs on this machine: its clock_timestamp() is this clock.
    return dt.datetime.now(dt.UTC)
