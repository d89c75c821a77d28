"""The fault-injection scenarios, each a function that runs against a database and
returns a `Report` (plus figures). The tests run them small; `bin/soak` runs them big.

Every scenario: enqueue jobs of the chaos app (tests/process/chaos/apps/chaos_app.py), run real
worker processes, inject its fault while jobs flow, wait until every job is terminal,
stop the workers, then check the ledger's invariants.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg

from pgjobs.app import App
from tests.process.chaos.harness import (
    LEASE_MS,
    SWEEP_MS,
    Cluster,
    Fleet,
    Ledger,
    Monitor,
    Redis,
    Report,
    ServerWatch,
    Ticker,
    connect,
    pgjobs_connections,
    process_cpu_seconds,
    terminate_backends,
)

CHAOS_ATTEMPTS = 25  # generous: restarts make handlers fail; no job may run out
RESCUE_S = (LEASE_MS + SWEEP_MS) / 1000


class Producer(threading.Thread):
    """Enqueues `total` chaos jobs in batches, at most `rate` jobs per second (None: as
    fast as it can), or for `duration` seconds when `total` is None."""

    def __init__(
        self,
        db_url: str,
        *,
        total: int | None,
        batch: int,
        rate: float | None = None,
        duration: float | None = None,
        seed: int = 1,
        **enqueue_options: Any,
    ) -> None:
        super().__init__(daemon=True, name="chaos-producer")
        self.ledger = Ledger(db_url, seed=seed)
        self.total = total
        self.batch = batch
        self.rate = rate
        self.duration = duration
        self.options = {"attempts": CHAOS_ATTEMPTS, **enqueue_options}
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        began = time.monotonic()
        try:
            while not self._halt.is_set():
                if self.total is not None and self.ledger.enqueued >= self.total:
                    break
                if self.duration is not None and time.monotonic() - began >= self.duration:
                    break
                count = self.batch
                if self.total is not None:
                    count = min(count, self.total - self.ledger.enqueued)
                self.ledger.enqueue(count, **self.options)
                if self.rate:
                    wait = began + self.ledger.enqueued / self.rate - time.monotonic()
                    if wait > 0:
                        self._halt.wait(wait)
        except BaseException as exc:  # reported by the scenario
            self.error = exc
        finally:
            self.ledger.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


class ApiProducer(threading.Thread):
    """Creates chaos jobs of a few ms through the public API, as an application would (an
    App with default settings: its own pool, `create_many_sync`), at `rate` jobs per
    second (changeable while it runs), and keeps creating through outages. Each call is
    timed, so the first success after a restart can be found. Created jobs are added to
    the ledger; the ids of a failed call are looked up once the run ends (its commit may
    have happened before the error)."""

    def __init__(
        self, db_url: str, *, rate: float, every: float = 0.02, job_ms: tuple[int, int] = (2, 8)
    ) -> None:
        super().__init__(daemon=True, name="chaos-api-producer")
        self.app = App(database_url=db_url)
        self.ledger = Ledger(db_url, seed=3)
        self.rate = rate
        self.every = every
        self.job_ms = job_ms
        self.calls: list[tuple[float, float, bool]] = []  # (started, ended, worked)
        self.created = 0
        self.failed_calls = 0
        self._unrecorded: list[tuple[list[Any], list[str]]] = []
        self._uncertain: list[tuple[list[Any], list[str]]] = []
        # A create in progress: its jobs carry the transaction's start time as created_at
        # but are invisible until it commits (see unrecorded).
        self._in_flight = 0
        self._halt = threading.Event()

    def run(self) -> None:
        due, last = 0.0, time.monotonic()
        while not self._halt.is_set():
            now = time.monotonic()
            due += self.rate * (now - last)
            last = now
            count = min(int(due), 1000)
            if count:
                due -= count
                self._create(count)
            # A failed call's commit is settled once the server answers again.
            if self._record():
                self._record(self._uncertain)
            self._halt.wait(self.every)

    def _create(self, count: int) -> None:
        low, high = self.job_ms
        built = [
            self.ledger.chaos_payload(min_ms=low, max_ms=high, return_share=0.25)
            for _ in range(count)
        ]
        jobs = [self.app.build("chaos", body, attempts=CHAOS_ATTEMPTS) for body, _ in built]
        batch = ([job.id for job in jobs], [mode for _, mode in built])
        started = time.monotonic()
        self._in_flight = 1
        try:
            self.app.create_many_sync(jobs)
        except Exception:  # an outage: the caller's next call tries again
            self.calls.append((started, time.monotonic(), False))
            self.failed_calls += 1
            self._uncertain.append(batch)
            return
        else:
            self.calls.append((started, time.monotonic(), True))
            self.created += count
            self._unrecorded.append(batch)
        finally:
            self._in_flight = 0

    def _record(self, batches: list[tuple[list[Any], list[str]]] | None = None) -> bool:
        batches = self._unrecorded if batches is None else batches
        while batches:
            ids, modes = batches[0]
            try:
                self.ledger.record(ids, modes)
            except psycopg.Error:
                return False
            batches.pop(0)
        return True

    def unrecorded(self) -> int:
        """Batches not yet looked up in the jobs table and added to the ledger, the one
        being created included: a wait for every job created before some moment must not
        end while a transaction begun before it has yet to commit."""
        return len(self._unrecorded) + len(self._uncertain) + self._in_flight

    def first_success_after(self, moment: float) -> float | None:
        ends = [end for start, end, ok in self.calls if ok and start >= moment]
        return min(ends) if ends else None

    def back_after(self, down_at: float, up_at: float, limit: float) -> float:
        """Seconds from `up_at` (the server accepts connections again) to the end of the
        first successful create that began after `down_at`; `limit` if none came."""
        deadline = up_at + limit
        while time.monotonic() < deadline:
            success = self.first_success_after(down_at)
            if success is not None:
                return max(0.0, success - up_at)
            time.sleep(0.01)
        return limit

    def stop(self) -> None:
        """Stop creating; every created job (and any that a failed call did create) is in
        the ledger when this returns."""
        self._halt.set()
        self.join(60)
        deadline = time.monotonic() + 60
        while not (self._record() and self._record(self._uncertain)):
            if time.monotonic() > deadline:
                raise AssertionError("could not record the API producer's jobs in the ledger")
            time.sleep(0.2)
        self.ledger.close()
        self.app.close_sync()


class Stoppable(Protocol):
    """What `Run.finish` needs of a fleet (`Fleet`, or `hosts.HostFleet`)."""

    def stop(self, timeout: float = 30) -> dict[int, int]: ...

    def log_tail(self, lines: int = 15) -> str: ...


@dataclass
class Run:
    """Shared plumbing of a scenario run."""

    name: str
    db_url: str
    log_dir: Path
    max_run_s: float = 0.05
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    notes: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)
    stop_codes: dict[int, int] = field(default_factory=dict)
    stop_s: float = 0.0
    producer_back_s: list[float] = field(default_factory=list)
    worker_back_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.db_url)
        self.monitor = Monitor(self.db_url, max_run_s=self.max_run_s)
        self.monitor.start()

    def finish(
        self,
        fleet: Stoppable | None,
        *,
        timeout: float,
        tick: Any = None,
        expect_completed: bool = True,
        producer: Producer | None = None,
    ) -> Report:
        if producer is not None:
            # Faults go on while jobs are still being enqueued.
            deadline = time.monotonic() + timeout
            while producer.is_alive() and time.monotonic() < deadline:
                if tick is not None:
                    tick()
                time.sleep(0.2)
            if producer.error is not None:
                raise producer.error
        done = self.ledger.wait_finished(timeout, tick)
        duration = time.monotonic() - self.began
        self.monitor.stop()
        if fleet is not None:
            began = time.monotonic()
            codes = self.stop_codes = fleet.stop()
            self.stop_s = time.monotonic() - began
            # -SIGTERM: a process respawned a moment ago got the signal before it had
            # installed its handler; it had claimed nothing yet.
            unclean = {
                slot: code for slot, code in codes.items() if code not in (0, -signal.SIGTERM)
            }
            if unclean:
                self.notes.append(f"workers that did not stop cleanly: {unclean}")
        if not done:
            self.notes.append(f"not finished after {timeout:.0f} s: {self.ledger.counts()}")
            if fleet is not None:
                self.notes.append(fleet.log_tail())
        report = self.ledger.report(
            self.name,
            duration_s=round(duration, 1),
            faults=dict(self.faults),
            notes=self.notes,
            expect_completed=expect_completed,
        )
        report.stuck_active = self.monitor.stuck
        report.producer_back_s = self.producer_back_s
        report.worker_back_s = self.worker_back_s
        report.max_silent_s = round(self.monitor.max_silent_s, 2)
        report.notes.extend(self.monitor.details)
        self.ledger.close()
        return report


# ---------------------------------------------------------------- 1. kill -9


def kill9(
    db_url: str,
    log_dir: Path,
    *,
    jobs: int,
    workers: int = 8,
    concurrency: int = 8,
    kill_every: float = 2.0,
    batch: int = 1000,
    timeout: float = 600,
    seed: int = 1,
    min_duration: float = 0.0,
) -> Report:
    """`kill -9` a random worker every `kill_every` s (and respawn it) while `workers`
    processes drain `jobs` jobs of 5-50 ms; a tenth of them delayed by up to 1 s.
    `min_duration`: spread the enqueueing over at least that many seconds, so a small
    run still sees several kills however fast the machine is."""
    run = Run(f"1. kill -9 a worker every {kill_every:g}s", db_url, log_dir)
    rng = random.Random(seed)
    fleet = Fleet(db_url, workers, concurrency=concurrency, log_dir=log_dir).start()
    rate = jobs / min_duration if min_duration else None
    producer = Producer(
        db_url,
        total=jobs,
        batch=min(batch, max(1, int(rate / 4))) if rate else batch,
        rate=rate,
        delayed_share=0.1,
        seed=seed,
    )
    producer.start()
    killer = Ticker(kill_every)

    def tick() -> None:
        if killer.due():
            slot = rng.choice(fleet.alive() or [0])
            fleet.kill(slot)
            fleet.spawn(slot)
            run.faults["kill -9"] += 1

    try:
        return run.finish(fleet, timeout=timeout, tick=tick, producer=producer)
    finally:
        fleet.kill_all()


# ---------------------------------------------------------------- 2. terminated connections


def terminate_connections(
    db_url: str,
    log_dir: Path,
    *,
    duration: float,
    rate: float,
    workers: int = 4,
    concurrency: int = 8,
    every: float = 5.0,
    timeout: float = 300,
) -> Report:
    """`pg_terminate_backend` every pgjobs connection (claim, listen, maintenance) every
    `every` s while jobs arrive at `rate` per second for `duration` s."""
    run = Run(f"2. terminate all pgjobs connections every {every:g}s", db_url, log_dir)
    fleet = Fleet(db_url, workers, concurrency=concurrency, log_dir=log_dir).start()
    producer = Producer(
        db_url, total=None, duration=duration, rate=rate, batch=max(1, int(rate / 4))
    )
    producer.start()
    killer = Ticker(every)
    terminated = 0

    def tick() -> None:
        nonlocal terminated
        if producer.is_alive() and killer.due():
            terminated += terminate_backends(db_url, "pgjobs:%")
            run.faults["pg_terminate_backend(all pgjobs)"] += 1

    try:
        while producer.is_alive():
            tick()
            time.sleep(0.1)
        report = run.finish(fleet, timeout=timeout, producer=producer)
    finally:
        fleet.kill_all()
    report.notes.append(f"{terminated} connections terminated")
    _count_exits(report, fleet, workers)
    return report


@dataclass
class ListenFigures:
    poll_s: float
    after_kill_ms: list[float]  # a job enqueued right after the listener was killed
    reconnected_ms: list[float]  # a job enqueued once the listener is back
    listener_kills: int


def kill_listener(
    db_url: str, log_dir: Path, *, probes: int = 5, poll_ms: int = 5000
) -> ListenFigures:
    """Kill only the LISTEN connection of a worker: a job enqueued while it is gone must
    still start within the poll interval, and once it is back, wake-ups work again (a job
    starts far sooner than the poll interval)."""
    fleet = Fleet(
        db_url, 1, concurrency=4, log_dir=log_dir, env={"JOBS_POLL_INTERVAL": str(poll_ms)}
    ).start()
    ledger = Ledger(db_url)
    figures = ListenFigures(poll_ms / 1000, [], [], 0)

    def listening() -> bool:
        return pgjobs_connections(db_url, "pgjobs:listen:%") > 0

    def probe() -> float:
        [job] = ledger.enqueue(1, attempts=3, payload=lambda: ({"ms": 1}, "in_tx"))
        deadline = time.monotonic() + 3 * poll_ms / 1000 + 10
        while time.monotonic() < deadline:
            row = ledger.query(
                "SELECT extract(epoch FROM min(s.started_at) - c.run_at) * 1000 AS ms "
                "FROM chaos_jobs c JOIN chaos_starts s ON s.job_id = c.job_id "
                "WHERE c.job_id = %s GROUP BY c.run_at",
                (job,),
            )
            if row:
                return round(float(row[0]["ms"]), 1)
            time.sleep(0.01)
        raise AssertionError(f"probe job {job} did not start")

    try:
        _wait(listening, 30, "the worker's listener")
        # A first job proves the worker is up before anything is measured.
        probe()
        for _ in range(probes):
            figures.listener_kills += terminate_backends(db_url, "pgjobs:listen:%")
            figures.after_kill_ms.append(probe())
            _wait(listening, 30, "the listener to reconnect")
            time.sleep(0.2)  # LISTEN is issued right after the connection appears
            figures.reconnected_ms.append(probe())
        if not ledger.wait_finished(30):
            raise AssertionError(f"probe jobs not finished: {ledger.counts()}")
    finally:
        fleet.stop()
        ledger.close()
    return figures


# ---------------------------------------------------------------- 3. PostgreSQL restarts


def postgres_restarts(
    cluster: Cluster,
    db_url: str,
    log_dir: Path,
    *,
    jobs: int,
    restarts: int,
    every: float = 5.0,
    workers: int = 4,
    concurrency: int = 8,
    api_rate: float = 20.0,
    timeout: float = 300,
) -> Report:
    """`pg_ctl restart -m immediate` the cluster `restarts` times, `every` s apart, while
    jobs are enqueued and run; the workers must reconnect by themselves. A producer that
    keeps creating through the public API measures, like the workers' first completion,
    how soon after each restart it works again."""
    run = Run(f"3. PostgreSQL restarted -m immediate x{restarts}", db_url, log_dir)
    fleet = Fleet(db_url, workers, concurrency=concurrency, log_dir=log_dir).start()
    # The restarts must find the workers running, not still starting up.
    wait_registered(run.ledger, workers)
    # Production spans every restart, so work arrives before, during and after each.
    rate = jobs / ((restarts + 1) * every)
    producer = Producer(db_url, total=jobs, batch=max(1, int(rate / 4)), rate=rate)
    producer.start()
    api = ApiProducer(db_url, rate=api_rate)
    api.start()
    downtime: list[float] = []
    try:
        for _ in range(restarts):
            time.sleep(every)
            downtime.append(restart_and_measure(cluster, db_url, run, api))
        api.stop()
        report = run.finish(fleet, timeout=timeout, producer=producer)
    finally:
        fleet.kill_all()
    report.notes.append(
        "restart took " + ", ".join(f"{d:.1f}s" for d in downtime) + " (pg_ctl -w); after "
        f"it (from the server accepting connections): {report.recovery_text()}; "
        f"{api.created} jobs created through the API, {api.failed_calls} calls failed"
    )
    report.resumed_s = max(run.worker_back_s, default=0.0)
    _count_exits(report, fleet, workers)
    return report


def restart_and_measure(
    cluster: Cluster, db_url: str, run: Run, api: ApiProducer, limit: float = 60
) -> float:
    """`pg_ctl restart -m immediate` while `api` keeps creating; adds to the run the
    seconds from the server accepting connections again to the API producer's first
    success and to the workers' first completion. Returns how long the restart took."""
    watch = ServerWatch(cluster.url)
    watch.start()
    took = cluster.restart_immediate()
    run.faults["pg_ctl restart -m immediate"] += 1
    # Nobody can heartbeat or rescue while the server is away.
    run.monitor.quiet(RESCUE_S + 8)
    watch.stop()
    down_at = watch.down_at if watch.down_at is not None else time.monotonic() - took
    up_at = watch.up_at if watch.up_at is not None else time.monotonic()
    run.worker_back_s.append(round(_resumed_after(db_url, limit, since=up_at), 3))
    run.producer_back_s.append(round(api.back_after(down_at, up_at, limit), 3))
    return took


def _resumed_after(db_url: str, limit: float, since: float) -> float:
    """Seconds from `since` (monotonic: the server came back) until a job completes."""
    deadline = since + limit
    with _retrying_connect(db_url, deadline) as conn:
        connected = time.monotonic()
        up = conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT extract(epoch FROM min(completed_at) - %s) AS s FROM job_results "
                "WHERE completed_at > %s",
                (up, up),
            ).fetchone()
            if row["s"] is not None:
                return connected - since + float(row["s"])
            waiting = conn.execute(
                "SELECT count(*) AS n FROM jobs WHERE status IN ('pending', 'active')"
            ).fetchone()
            if not waiting["n"]:
                return connected - since  # nothing left to run
            time.sleep(0.1)
    return limit


def _retrying_connect(db_url: str, deadline: float) -> psycopg.Connection[Any]:
    while True:
        try:
            return connect(db_url, "chaos:observer")
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# ---------------------------------------------------------------- 4. Redis restart


def redis_restart(
    db_url: str,
    redis: Redis,
    log_dir: Path,
    *,
    jobs: int,
    down_s: float = 3.0,
    rate_limit: tuple[int, int] | None = (100_000, 1000),
    workers: int = 3,
    concurrency: int = 8,
    timeout: float = 300,
) -> tuple[Report, int]:
    """Stop Redis mid-run for `down_s` s, then start it again. Returns the report and the
    number of jobs completed while Redis was down."""
    run = Run(f"4. Redis stopped for {down_s:g}s mid-run", db_url, log_dir)
    if rate_limit is not None:
        # A limit far above the flow: no job waits for it, but every claim takes its
        # tokens from Redis (from PostgreSQL while Redis is away).
        with connect(db_url) as conn:
            conn.execute(
                "UPDATE job_queues SET rate_limit_max = %s, rate_limit_duration_ms = %s "
                "WHERE name = 'default'",
                rate_limit,
            )
    fleet = Fleet(
        db_url,
        workers,
        concurrency=concurrency,
        log_dir=log_dir,
        env={"JOBS_REDIS_URL": redis.url},
    ).start()
    rate = jobs / (down_s * 3 + 2)
    producer = Producer(db_url, total=jobs, batch=max(1, int(rate / 4)), rate=rate)
    producer.start()
    try:
        _wait(lambda: run.ledger.counts().get("completed", 0) >= jobs // 5, 60, "progress")
        before = run.ledger.counts().get("completed", 0)
        redis.down()
        run.faults["redis stopped"] += 1
        time.sleep(down_s)
        during = run.ledger.counts().get("completed", 0) - before
        redis.up()
        report = run.finish(fleet, timeout=timeout, producer=producer)
    finally:
        fleet.kill_all()
    report.notes.append(f"{during} jobs completed while Redis was down")
    redis_lines = sum(
        1
        for path in log_dir.glob("worker-*.log")
        for line in path.read_text(errors="replace").splitlines()
        if "redis" in line.lower()
    )
    report.notes.append(f"{redis_lines} worker log lines mention Redis")
    _count_exits(report, fleet, workers)
    return report, during


# ---------------------------------------------------------------- 5. hangs and poison


@dataclass
class HangFigures:
    jobs: dict[str, dict[str, Any]]  # type -> the job's final row
    failures: dict[str, list[str]]  # type -> failure kinds in order
    starts: dict[str, int]  # type -> runs
    crashes: int  # worker processes that died (the poison job)
    cpu_loop_core_share: float  # CPU used by the worker while the abandoned loop spun
    cpu_loop_timeout_ms: float  # from the loop's start to its recorded timeout
    stop_codes: dict[int, int]  # exit codes of the hang worker on SIGTERM
    stop_s: float  # how long it took to stop (abandoned threads still hanging)


def hangs_and_poison(
    db_url: str,
    log_dir: Path,
    *,
    innocents: int = 300,
    max_stalled: int = 2,
    timeout_ms: int = 700,
    spin_s: float = 4.0,
    timeout: float = 180,
) -> tuple[Report, HangFigures]:
    """Handlers that hang past their timeout (async, sync thread, CPU loop), and a poison
    job that kills its worker process every time, among ordinary jobs."""
    run = Run("5. hangs past the timeout and a poison job", db_url, log_dir, max_run_s=1.0)
    env = {"JOBS_MAX_STALLED_COUNT": str(max_stalled)}
    # The poison job has a queue and a worker of its own: a crash takes down every run
    # of its process, and the hangs must be seen timing out, not stalling.
    fleet = Fleet(db_url, 1, concurrency=6, log_dir=log_dir, env=env).start()
    poison_fleet = Fleet(
        db_url, 1, concurrency=2, log_dir=log_dir, env=env, queues=["poison"], name="poison"
    ).start()
    ledger = run.ledger
    hang = {"timeout": timeout_ms, "attempts": 2}
    ids = {
        "hang-async": ledger.enqueue(1, type="hang-async", payload=lambda: ({}, "hang"), **hang),
        "hang-sync": ledger.enqueue(
            1, type="hang-sync", payload=lambda: ({"hang_s": 3600}, "hang"), **hang
        ),
        "cpu-loop": ledger.enqueue(
            1,
            type="cpu-loop",
            payload=lambda: ({"spin_s": spin_s}, "hang"),
            timeout=timeout_ms,
            attempts=1,
        ),
        "poison": ledger.enqueue(
            1, type="poison", payload=lambda: ({}, "poison"), attempts=10, queue="poison"
        ),
    }
    ledger.enqueue(innocents, attempts=CHAOS_ATTEMPTS)
    crashes = 0
    cpu_share = 0.0
    measured = False

    def tick() -> None:
        nonlocal crashes, cpu_share, measured
        respawned = poison_fleet.respawn_dead()
        crashes += respawned
        run.faults["worker process killed by the poison job"] += respawned
        if not measured:
            pid = _start_pid(ledger, ids["cpu-loop"][0])
            if pid is not None:
                measured = True
                cpu_share = _core_share(pid, seconds=min(2.0, spin_s / 2))

    try:
        report = run.finish(fleet, timeout=timeout, tick=tick, expect_completed=False)
        poison_fleet.stop()
    finally:
        fleet.kill_all()
        poison_fleet.kill_all()
    with connect(db_url) as conn:
        figures = HangFigures(
            jobs={},
            failures={},
            starts={},
            crashes=crashes,
            cpu_loop_core_share=round(cpu_share, 2),
            cpu_loop_timeout_ms=0.0,
            stop_codes=run.stop_codes,
            stop_s=round(run.stop_s, 1),
        )
        for kind, [job_id] in ids.items():
            figures.jobs[kind] = (
                conn.execute(
                    "SELECT status, attempts, stalled_count, last_error FROM jobs WHERE id = %s",
                    (job_id,),
                ).fetchone()
                or {}
            )
            figures.failures[kind] = [
                r["kind"]
                for r in conn.execute(
                    "SELECT kind FROM job_failures WHERE job_id = %s ORDER BY failed_at", (job_id,)
                )
            ]
            figures.starts[kind] = conn.execute(
                "SELECT count(*) AS n FROM chaos_starts WHERE job_id = %s", (job_id,)
            ).fetchone()["n"]
        row = conn.execute(
            "SELECT extract(epoch FROM f.failed_at - s.started_at) * 1000 AS ms "
            "FROM job_failures f JOIN chaos_starts s ON s.job_id = f.job_id "
            "WHERE f.job_id = %s",
            (ids["cpu-loop"][0],),
        ).fetchone()
        figures.cpu_loop_timeout_ms = round(float(row["ms"]), 1) if row else -1.0
        innocent_failed = conn.execute(
            "SELECT count(*) AS n FROM chaos_jobs c JOIN jobs j ON j.id = c.job_id "
            "WHERE c.mode IN ('in_tx', 'return') AND j.status <> 'completed'"
        ).fetchone()["n"]
    report.notes.append(f"ordinary jobs not completed: {innocent_failed}")
    report.notes.append(
        f"poison: {figures.starts['poison']} runs, {crashes} crashed workers, "
        f"final {figures.jobs['poison'].get('status')}"
    )
    report.notes.append(
        f"CPU loop: the worker used {cpu_share:.0%} of a core while the abandoned thread spun"
    )
    return report, figures


# ---------------------------------------------------------------- 8. poison among kill -9


@dataclass
class PoisonFigures:
    innocent_failed: int  # ordinary jobs that did not complete
    innocent_charged: int  # ordinary jobs charged a stall (stalled_count > 0)
    innocent_interrupted: int  # ordinary jobs taken back uncharged at least once
    poison: list[dict[str, Any]]  # status, stalled_count, last_error, failure kinds
    crashes: int  # worker processes the poison jobs killed (found dead and respawned)


def poison_among_kills(
    db_url: str,
    log_dir: Path,
    *,
    jobs: int,
    poison: int,
    max_stalled: int,
    workers: int = 3,
    concurrency: int = 10,
    kill_every: float = 1.5,
    min_duration: float = 10.0,
    timeout: float = 600,
    seed: int = 6,
) -> tuple[Report, PoisonFigures]:
    """`workers` processes drain `jobs` jobs of 5-50 ms, enqueued over `min_duration`
    s, while a random worker is SIGKILLed every `kill_every` s (and respawned) and
    `poison` jobs, enqueued among them early on, kill their worker process on every run.
    Every job in flight in a dead worker is taken back as a suspect that runs alone, so
    only the poison jobs are charged stalls: they fail after `max_stalled` + 1 of them,
    and no ordinary job fails."""
    run = Run(
        f"8. poison jobs and kill -9 every {kill_every:g}s (max stalled {max_stalled})",
        db_url,
        log_dir,
    )
    rng = random.Random(seed)
    env = {"JOBS_MAX_STALLED_COUNT": str(max_stalled)}
    fleet = Fleet(db_url, workers, concurrency=concurrency, log_dir=log_dir, env=env).start()
    # A worker of an empty queue, never killed: it takes part in maintenance only, so the
    # rescues keep coming while every worker of the fleet is dead or starting up (a
    # Python process takes seconds to start on a busy machine).
    bystander = Fleet(
        db_url, 1, concurrency=1, log_dir=log_dir, env=env, queues=["idle"], name="bystander"
    ).start()
    producer = Producer(
        db_url,
        total=jobs,
        batch=max(1, int(jobs / min_duration / 4)),
        rate=jobs / min_duration,
        seed=seed,
    )
    producer.start()
    began = time.monotonic()
    # Spread over the first quarter, so the poison jobs' rounds of crashes overlap.
    poison_due = [i * min_duration / 4 / poison for i in range(poison)]
    poison_ids: list[Any] = []
    killer = Ticker(kill_every)
    crashes = 0

    def tick() -> None:
        nonlocal crashes
        while poison_due and time.monotonic() - began >= poison_due[0]:
            poison_due.pop(0)
            poison_ids.extend(
                run.ledger.enqueue(
                    1, type="poison", payload=lambda: ({}, "poison"), attempts=CHAOS_ATTEMPTS
                )
            )
        respawned = fleet.respawn_dead()
        crashes += respawned
        run.faults["worker killed by a poison job"] += respawned
        if killer.due():
            slot = rng.choice(fleet.alive() or [0])
            fleet.kill(slot)
            fleet.spawn(slot)
            run.faults["kill -9"] += 1

    try:
        # The producer ends before the poison is all in when the jobs are few.
        while poison_due and time.monotonic() - began < timeout:
            tick()
            time.sleep(0.05)
        report = run.finish(
            fleet, timeout=timeout, tick=tick, producer=producer, expect_completed=False
        )
        bystander.stop()
    finally:
        fleet.kill_all()
        bystander.kill_all()
    figures = _poison_figures(db_url, poison_ids, crashes)
    report.innocents_failed = figures.innocent_failed
    report.notes.append(
        f"ordinary jobs not completed: {figures.innocent_failed}, charged a stall: "
        f"{figures.innocent_charged}, taken back uncharged: {figures.innocent_interrupted}; "
        f"poison: {[(p['status'], p['stalled_count']) for p in figures.poison]}"
    )
    return report, figures


def _poison_figures(db_url: str, poison_ids: list[Any], crashes: int) -> PoisonFigures:
    with connect(db_url) as conn:
        innocent = conn.execute(
            "SELECT count(*) FILTER (WHERE j.status <> 'completed') AS failed, "
            "count(*) FILTER (WHERE j.stalled_count > 0) AS charged, "
            "count(*) FILTER (WHERE EXISTS (SELECT 1 FROM job_failures f "
            "  WHERE f.job_id = j.id AND f.kind = 'interrupted')) AS interrupted "
            "FROM chaos_jobs c JOIN jobs j ON j.id = c.job_id WHERE c.mode <> 'poison'"
        ).fetchone()
        assert innocent is not None
        poison = conn.execute(
            "SELECT j.id, j.status, j.stalled_count, j.last_error, "
            "ARRAY(SELECT f.kind FROM job_failures f WHERE f.job_id = j.id "
            "      ORDER BY f.failed_at) AS kinds "
            "FROM jobs j WHERE j.id = ANY(%s) ORDER BY j.id",
            (poison_ids,),
        ).fetchall()
    return PoisonFigures(
        innocent_failed=int(innocent["failed"]),
        innocent_charged=int(innocent["charged"]),
        innocent_interrupted=int(innocent["interrupted"]),
        poison=[dict(row) for row in poison],
        crashes=crashes,
    )


def _start_pid(ledger: Ledger, job_id: Any) -> int | None:
    try:
        rows = ledger.query("SELECT pid FROM chaos_starts WHERE job_id = %s", (job_id,))
    except psycopg.Error:
        return None
    return int(rows[0]["pid"]) if rows else None


def _core_share(pid: int, seconds: float) -> float:
    try:
        before = process_cpu_seconds(pid)
        time.sleep(seconds)
        return (process_cpu_seconds(pid) - before) / seconds
    except (OSError, IndexError, ValueError):
        return 0.0


# ---------------------------------------------------------------- 6. SIGSTOP past the lease


@dataclass
class StopFigures:
    frozen_pid: int
    rescuer_pid: int
    results_by_pid: dict[int, int]
    effects_by_pid: dict[int, int]
    stale_discarded: int  # "stale run discarded" lines in the frozen worker's log
    frozen_failures_recorded: int  # failure rows written by the frozen worker's old runs


def sigstop(
    db_url: str,
    log_dir: Path,
    *,
    jobs: int = 8,
    job_ms: int = 1500,
    timeout: float = 120,
) -> tuple[Report, StopFigures]:
    """Freeze a worker (SIGSTOP) with jobs in flight past its lease; a second worker
    rescues and reruns them; the frozen one is continued (SIGCONT) while the reruns are
    still going: its late completions must be rejected by the fence."""
    run = Run("6. SIGSTOP a worker past its lease, then SIGCONT", db_url, log_dir, max_run_s=2)
    fleet = Fleet(db_url, 2, concurrency=jobs, log_dir=log_dir)
    frozen = fleet.spawn(0)
    ledger = run.ledger
    half = jobs // 2
    ids = ledger.enqueue(half, attempts=5, payload=lambda: ({"ms": job_ms}, "in_tx"))
    ids += ledger.enqueue(
        jobs - half, attempts=5, payload=lambda: ({"ms": job_ms, "complete": "return"}, "return")
    )

    def starts_by(pid: int) -> int:
        return int(
            ledger.query(
                "SELECT count(DISTINCT job_id) AS n FROM chaos_starts WHERE pid = %s", (pid,)
            )[0]["n"]
        )

    try:
        _wait(lambda: starts_by(frozen.pid) == jobs, 30, "all jobs running on the first worker")
        fleet.signal(0, signal.SIGSTOP)
        run.faults["SIGSTOP"] += 1
        rescuer = fleet.spawn(1)
        _wait(lambda: starts_by(rescuer.pid) == jobs, 30, "the rescued runs on the second worker")
        fleet.signal(0, signal.SIGCONT)
        run.faults["SIGCONT while the reruns run"] += 1
        report = run.finish(fleet, timeout=timeout)
    finally:
        fleet.signal(0, signal.SIGCONT)
        fleet.kill_all()
    with connect(db_url) as conn:
        results = conn.execute(
            "SELECT (r.result->>'pid')::int AS pid, count(*) AS n FROM job_results r "
            "JOIN chaos_jobs c ON c.job_id = r.job_id GROUP BY 1"
        ).fetchall()
        effects = conn.execute(
            "SELECT pid, count(*) AS n FROM chaos_effects GROUP BY pid"
        ).fetchall()
        frozen_failures = conn.execute(
            "SELECT count(*) AS n FROM job_failures f JOIN chaos_jobs c ON c.job_id = f.job_id "
            # The rescuer's rows (kind stalled, or interrupted when not charged) aside.
            "WHERE f.kind NOT IN ('stalled', 'interrupted')"
        ).fetchone()["n"]
    log = fleet.log_path(0).read_text(errors="replace")
    figures = StopFigures(
        frozen_pid=frozen.pid,
        rescuer_pid=rescuer.pid,
        results_by_pid={r["pid"]: r["n"] for r in results},
        effects_by_pid={r["pid"]: r["n"] for r in effects},
        stale_discarded=log.count("stale run discarded"),
        frozen_failures_recorded=int(frozen_failures),
    )
    report.notes.append(
        f"results by pid {figures.results_by_pid}, frozen worker's late outcomes discarded "
        f"by the fence: {figures.stale_discarded}"
    )
    return report, figures


# ---------------------------------------------------------------- 7. long transaction


@dataclass
class LongTxFigures:
    hold_s: float
    baseline_per_s: float  # completed jobs per second before the hold
    hold_first_per_s: float  # ... over the first 10 s of the hold
    hold_last_per_s: float  # ... over its last 10 s
    after_per_s: float  # ... over the 10 s after the release
    probe_ms_before: float  # the claim's index scan (read-only), median over 10 s
    probe_ms_end: float  # ... at the end of the hold
    probe_ms_after: float  # ... 5-15 s after the release
    dead_tuples_before: int
    dead_tuples_peak: int
    claim_index_kb_before: int
    claim_index_kb_peak: int
    recovered_throughput_s: float | None  # release -> throughput back to 90 % of baseline
    recovered_dead_tuples_s: float | None  # release -> autovacuum removed half the peak
    health_oldest_s: float  # what pgjobs' database health said near the end of the hold
    stats_flag: str  # the warning line of `pgjobs stats`
    metrics_line: str  # the gauge in /metrics
    timeline: list[tuple[float, int, int, float]]  # (s, completed/s, dead tuples, probe ms)


def long_transaction(
    db_url: str,
    log_dir: Path,
    *,
    baseline_s: float,
    hold_s: float,
    recovery_s: float,
    workers: int = 4,
    concurrency: int = 8,
    backlog: int = 2000,
) -> tuple[Report, LongTxFigures]:
    """Jobs flow at full speed (a backlog is kept) while an idle REPEATABLE READ
    transaction holds its snapshot for `hold_s` s; measure throughput, dead tuples, the
    claim index and the cost of the claim's index scan before, during and after, and
    what pgjobs' health output says."""
    run = Run(f"7. idle REPEATABLE READ transaction held {hold_s:g}s", db_url, log_dir)
    fleet = Fleet(db_url, workers, concurrency=concurrency, log_dir=log_dir).start()
    feeder = _Feeder(db_url, backlog)
    feeder.start()
    sampler = _Sampler(db_url)
    sampler.start()
    holder = psycopg.connect(db_url, application_name="chaos:idle-holder")
    health_oldest, stats_flag, metrics_line = 0.0, "", ""
    try:
        time.sleep(baseline_s)
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM jobs")  # takes the snapshot
        began = sampler.elapsed()
        run.faults["idle REPEATABLE READ transaction"] += 1
        time.sleep(max(0.0, hold_s - 4))
        health_oldest, stats_flag, metrics_line = _health_output(db_url, log_dir)
        time.sleep(max(0.0, hold_s - (sampler.elapsed() - began)))
        holder.rollback()
        released = sampler.elapsed()
        baseline = sampler.rate(began - min(baseline_s - 1, 10), began)
        dead_before = sampler.at(began).dead
        dead_peak = max((x.dead for x in sampler.samples), default=0)
        recovered_tp = recovered_dead = None
        deadline = time.monotonic() + recovery_s
        while time.monotonic() < deadline and (recovered_tp is None or recovered_dead is None):
            time.sleep(0.5)
            now = sampler.elapsed()
            recent = sampler.rate(now - 3, now)
            if recovered_tp is None and now - released >= 3 and recent >= 0.9 * baseline:
                recovered_tp = round(max(0.0, now - 3 - released), 1)
            # Autovacuum (every autovacuum_naptime, 1 min by default) ran at last.
            if recovered_dead is None and sampler.last().dead <= dead_peak // 2:
                recovered_dead = round(now - released, 1)
        # Whatever the recovery loop needed, measure at least 15 s after the release.
        time.sleep(max(0.0, released + 15 - sampler.elapsed()))
        feeder.stop()
        report = run.finish(fleet, timeout=120)
    finally:
        holder.close()
        feeder.stop()
        sampler.stop()
        fleet.kill_all()
    figures = LongTxFigures(
        hold_s=hold_s,
        baseline_per_s=round(baseline, 1),
        hold_first_per_s=round(sampler.rate(began, began + 10), 1),
        hold_last_per_s=round(sampler.rate(released - 10, released), 1),
        after_per_s=round(sampler.rate(released, released + 10), 1),
        probe_ms_before=sampler.probe_ms(began - 10, began),
        probe_ms_end=sampler.probe_ms(released - 10, released),
        probe_ms_after=sampler.probe_ms(released + 5, released + 15),
        dead_tuples_before=dead_before,
        dead_tuples_peak=max((x.dead for x in sampler.samples), default=0),
        claim_index_kb_before=sampler.at(began).index_kb,
        claim_index_kb_peak=max((x.index_kb for x in sampler.samples), default=0),
        recovered_throughput_s=recovered_tp,
        recovered_dead_tuples_s=recovered_dead,
        health_oldest_s=round(health_oldest, 1),
        stats_flag=stats_flag,
        metrics_line=metrics_line,
        timeline=sampler.per_second(),
    )
    f = figures
    report.notes.append(
        f"completed/s: {f.baseline_per_s} before, {f.hold_first_per_s} and "
        f"{f.hold_last_per_s} in the hold's first and last 10 s, {f.after_per_s} after; "
        f"claim index scan {f.probe_ms_before} -> {f.probe_ms_end} -> {f.probe_ms_after} ms; "
        f"dead tuples {f.dead_tuples_before} -> {f.dead_tuples_peak}, removed "
        f"{recovered_dead} s after the release"
    )
    return report, figures


class _Feeder(threading.Thread):
    """Keeps about `backlog` jobs pending so the workers run at full speed."""

    def __init__(self, db_url: str, backlog: int) -> None:
        super().__init__(daemon=True, name="chaos-feeder")
        self.ledger = Ledger(db_url, seed=7)
        self.backlog = backlog
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                pending = self.ledger.counts().get("pending", 0)
                if pending < self.backlog:
                    self.ledger.enqueue(self.backlog - pending, attempts=CHAOS_ATTEMPTS)
                self._halt.wait(0.25)
        finally:
            self.ledger.close()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(30)


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the sampler started
    completed: int  # job_results rows so far
    dead: int  # n_dead_tup of jobs
    index_kb: int  # size of the claim index
    probe_ms: float  # the claim's index scan, read-only


# The claim's read path (job_ready_claim_idx in claim order) without locking anything:
# every dead index entry that an open snapshot may still see costs it a heap visit.
PROBE_SQL = (
    "SELECT id FROM job_ready WHERE queue = 'default' AND NOT suspect "
    "ORDER BY priority, run_at, id LIMIT 1"
)


class _Sampler(threading.Thread):
    """Twice a second: completed jobs, dead tuples, claim index size, probe time."""

    def __init__(self, db_url: str) -> None:
        super().__init__(daemon=True, name="chaos-sampler")
        self.db_url = db_url
        self.t0 = time.monotonic()
        self.samples: list[Sample] = []
        self._halt = threading.Event()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def run(self) -> None:
        with connect(self.db_url, "chaos:sampler") as conn:
            while not self._halt.wait(0.5):
                began = time.perf_counter()
                conn.execute(PROBE_SQL).fetchall()
                probe_ms = (time.perf_counter() - began) * 1000
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM job_results) AS completed, "
                    "coalesce((SELECT n_dead_tup FROM pg_stat_user_tables "
                    "          WHERE relid = 'jobs'::regclass), 0) AS dead, "
                    "pg_relation_size('job_ready_claim_idx') / 1024 AS index_kb"
                ).fetchone()
                if row:
                    self.samples.append(
                        Sample(
                            self.elapsed(),
                            int(row["completed"]),
                            int(row["dead"]),
                            int(row["index_kb"]),
                            round(probe_ms, 2),
                        )
                    )

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)

    def at(self, t: float) -> Sample:
        if not self.samples:
            return Sample(t, 0, 0, 0, 0.0)
        return min(self.samples, key=lambda s: abs(s.t - t))

    def last(self) -> Sample:
        return self.samples[-1] if self.samples else Sample(0.0, 0, 0, 0, 0.0)

    def rate(self, start: float, end: float) -> float:
        a, b = self.at(start), self.at(end)
        return (b.completed - a.completed) / (b.t - a.t) if b.t > a.t else 0.0

    def probe_ms(self, start: float, end: float) -> float:
        values = [s.probe_ms for s in self.samples if start <= s.t <= end]
        return round(statistics.median(values), 2) if values else 0.0

    def per_second(self) -> list[tuple[float, int, int, float]]:
        out = []
        for a, b in zip(self.samples, self.samples[1:], strict=False):
            rate = round((b.completed - a.completed) / (b.t - a.t))
            out.append((round(b.t, 1), rate, b.dead, b.probe_ms))
        return out


def _health_output(db_url: str, log_dir: Path) -> tuple[float, str, str]:
    """What pgjobs' own health surfaces say: the ops module's database health, the
    `pgjobs stats` text and the `/metrics` gauge."""
    import asyncio

    from pgjobs.app import App
    from pgjobs.config import load_settings
    from pgjobs.ops import Ops
    from pgjobs.web import metrics as metrics_text

    async def collect() -> tuple[float, str]:
        app = App(load_settings({"DATABASE_URL": db_url}, env_file=None), builtin_types=False)
        try:
            ops = Ops(app)
            health = await ops.database_health()
            snapshot = await ops.metrics_snapshot()
        finally:
            await app.close()
        gauge = next(
            (
                line
                for line in metrics_text.render(snapshot).decode().splitlines()
                if line.startswith("pgjobs_oldest_transaction_age_seconds ")
            ),
            "",
        )
        return float(health.oldest_transaction_s or 0.0), gauge

    oldest, gauge = asyncio.run(collect())
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBS_") and k != "DATABASE_URL"}
    stats = subprocess.run(
        [sys.executable, "-m", "pgjobs", "stats"],
        env={**env, "DATABASE_URL": db_url},
        cwd=log_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    flag = next((line for line in stats.stdout.splitlines() if line.startswith("warning:")), "")
    return oldest, flag, gauge


def _count_exits(report: Report, fleet: Fleet, started: int) -> None:
    """Workers must ride out this fault on their own: none may have exited before the
    scenario stopped them."""
    report.worker_exits = fleet.spawned - started + fleet.exited_early
    report.exits_allowed = False


def kill_running_worker(fleet: Fleet, ledger: Ledger, rng: random.Random) -> bool:
    """SIGKILL a random worker of `fleet` that is up (registered), and respawn it; False
    when none is up. On a busy machine a Python process takes seconds to start: killing
    processes that have not started yet would leave the fleet down, testing nothing."""
    try:
        rows = ledger.query("SELECT pid FROM job_workers")
    except psycopg.Error:
        return False
    registered = {int(row["pid"]) for row in rows}
    running = [slot for slot in fleet.alive() if fleet.pid(slot) in registered]
    if not running:
        return False
    slot = rng.choice(running)
    fleet.kill(slot)
    fleet.spawn(slot)
    return True


def wait_registered(ledger: Ledger, workers: int, timeout: float = 120) -> None:
    """Wait until `workers` worker processes have registered (they are up and polling)."""

    def registered() -> int:
        return int(ledger.query("SELECT count(*) AS n FROM job_workers")[0]["n"])

    _wait(lambda: registered() >= workers, timeout, f"{workers} workers to register")


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
