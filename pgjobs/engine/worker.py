"""The worker: claims jobs into free slots, runs them, records outcomes, keeps its lease.

One worker is one asyncio loop with `concurrency` slots. The fetch loop claims at most
as many jobs as there are free slots, in one statement; while runs are shorter than a
claim's round trip it also claims for the slots that will free before the answer comes
(see `_claim_limit`); each job runs as a task; the completer records outcomes in
batches; a heartbeat keeps the worker's lease; the listener turns NOTIFYs into
immediate claims (a jittered poll runs underneath); the maintenance loops stage, rescue
and prune while holding their leader locks.

Shutdown: stop claiming, let running jobs finish for up to the grace period, then give
the rest back (pending, attempt not used), record everything, deregister.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from pgjobs._version import __version__
from pgjobs.backoff import ReconnectDelay, keep_running
from pgjobs.context import HandlerSpec, JobContext, JobHost
from pgjobs.db import make_pool
from pgjobs.engine.completer import Completer, Outcome, RunToken
from pgjobs.engine.executor import ClaimedJob, Execution, ThreadRunner
from pgjobs.engine.maintenance.tasks import (
    Maintenance,
    MaintenanceTask,
    Stager,
    default_tasks,
    run_round,
)
from pgjobs.errors import StaleRun, ValidationError
from pgjobs.ids import uuid7
from pgjobs.jsonlimits import UndecodableJson
from pgjobs.limits import RateLimiter
from pgjobs.producer.options import validate_queue
from pgjobs.queries import query
from pgjobs.redact import mask_urls
from pgjobs.signals.events import JobEvent, Publisher
from pgjobs.signals.wakeup import Listener, RedisWakeups

log = logging.getLogger("pgjobs.worker")


class WorkerHost(JobHost, Protocol):
    """What a worker needs of the App that runs it: settings, clock, the handler table,
    and the App itself to hand to handlers as `ctx.app`."""

    @property
    def handlers(self) -> Mapping[str, HandlerSpec]: ...


PROGRESS_MIN_INTERVAL = 0.25  # seconds between progress writes of one run
CLAIM_BATCH_WAIT = 0.002  # longest wait for more free slots before claiming
MAX_CLAIM = 100  # jobs one claim takes at most
# Jobs held beyond the slots at most (see Worker._claim_ahead): two full claims, so the
# next one is on its way while the jobs of the last run.
MAX_AHEAD = 2 * MAX_CLAIM
# Every loop of the worker retries on its own, so a checkout waits briefly: a heartbeat
# stuck longer than the lease loses the worker's jobs.
POOL_WAIT = 2.0
# A job held this long (and at least two heartbeats) that the worker is not running is
# an orphan of a lost claim answer; younger ones may be a claim being received.
ORPHAN_GRACE_MS = 5000
AVERAGE_WEIGHT = 0.1  # of the latest value in the running averages of runs and claims


class RunningAverage:
    """An exponentially weighted mean: recent values count most. None until the first."""

    def __init__(self, weight: float = AVERAGE_WEIGHT) -> None:
        self.weight = weight
        self.value: float | None = None

    def add(self, sample: float) -> None:
        if self.value is None:
            self.value = sample
        else:
            self.value += self.weight * (sample - self.value)


@dataclass(slots=True)
class ClaimTimings:
    """How long runs and claims take, as running averages: while runs are shorter than
    a claim's round trip, the worker claims ahead (see Worker._claim_limit).

    Test seam: `Worker(timings=...)` starts a worker with averages of the caller's, e.g.
    seeded with `add()` so that it claims ahead from the first claim, or with
    `weight=0.0` so that measurements never move them."""

    run: RunningAverage = field(default_factory=RunningAverage)
    claim: RunningAverage = field(default_factory=RunningAverage)

    def runs_are_short(self) -> bool:
        run, trip = self.run.value, self.claim.value
        return run is not None and trip is not None and run < trip


@dataclass(frozen=True, slots=True)
class WorkerState:
    """What a worker holds at one moment (`Worker.snapshot()`): read-only counts for
    operators, metrics and tests."""

    running: int  # handlers running now
    ready: int  # jobs claimed ahead, waiting for a slot
    unrecorded: int  # runs that ended whose outcome is not written yet
    processed: int  # runs ended since the worker started
    claims_ahead: bool  # runs are shorter than a claim's round trip and no rate limit applies
    run_ms: float | None  # running average of a run (None before the first)
    claim_ms: float | None  # running average of a claim's round trip


# Called with a loop step's name before the step (a test seam, see Worker).
FaultHook = Callable[[str], None]


class Worker:
    """A worker for `queues`. `async with app.worker(...)` runs it in the background;
    `await worker.run()` runs it until `stop()` is called; `snapshot()` tells what it
    holds.

    Test seams (documented in docs/development.md), both None in production:
    `timings` replaces the running averages that decide claiming ahead (see
    ClaimTimings); `fault` is called with a step's name before each step of a
    background loop: "claim" (one claim of the claiming loop), "record" (one write of
    outcomes) and "heartbeat" (one beat of the heartbeat loop, not the registration).
    Whatever it raises, that step raises, as a bug in the step would.
    """

    def __init__(
        self,
        app: WorkerHost,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int | None = None,
        maintenance: bool = True,
        listen: bool | None = None,
        grace: float | None = None,
        poll_interval: float | None = None,
        tasks: list[MaintenanceTask] | None = None,
        drain: bool = False,
        timings: ClaimTimings | None = None,
        fault: FaultHook | None = None,
    ) -> None:
        settings = app.settings
        if not queues:
            raise ValidationError("a worker needs at least one queue")
        self.queues = [validate_queue(q) for q in dict.fromkeys(queues)]
        self.concurrency = concurrency or settings.default_concurrency
        if self.concurrency < 1:
            raise ValidationError("concurrency must be at least 1")
        self.app = app
        self.settings = settings
        self.clock = app.clock
        self.id = uuid7()
        self.name = f"{self.id.hex[-12:]}"
        self.grace = settings.shutdown_grace_ms / 1000 if grace is None else grace
        self.poll_interval = (
            settings.poll_interval_ms / 1000 if poll_interval is None else poll_interval
        )
        self._drain = drain
        # The fetch loop waiting for free places sleeps until this few jobs are held
        # (-1: it does not wait); see _await_slots.
        self._held_low = -1
        self._job_loggers: dict[str, logging.Logger] = {}
        # Outcomes not yet written past which the worker stops claiming (PostgreSQL not
        # keeping up, or unreachable). Several times what the worker may hold: a bound
        # near it made every claim wait for the write before it (a third less throughput).
        self._max_backlog = max(10 * self.concurrency, 4 * (self.concurrency + MAX_AHEAD))
        # Behind a transaction pooler only over JOBS_LISTEN_DATABASE_URL (Settings.listen_url).
        self._listen = (
            (settings.listen if listen is None else listen)
            and not drain
            and settings.listen_url is not None
        )
        self._with_maintenance = maintenance and not drain
        self._tasks = tasks
        self.processed = 0
        # Keyed by run token, not job id: after an outage longer than the lease, this
        # worker may claim again a job whose old run it is still running.
        self._running: dict[RunToken, tuple[asyncio.Task[None], Execution]] = {}
        # Claimed jobs waiting for a slot (claimed ahead, see _claim_limit); they start
        # as soon as runs end, in claim order.
        self._ready: deque[ClaimedJob] = deque()
        # Suspects (jobs rescued from a dead worker) run alone: while one may be waiting
        # (as the heartbeat last read) the worker lets its runs end, then claims one; it
        # claims nothing else until that run is over and recorded (see _claim_limit).
        self._suspects_waiting = True
        self._suspect: UUID | None = None
        self._timings = ClaimTimings() if timings is None else timings
        self._fault = fault
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._cancel_hinted = asyncio.Event()
        self._stopping = False
        self._stop_requested = asyncio.Event()  # _stopping, for loops that wait on it
        self._stopped = asyncio.Event()
        self._start_done = asyncio.Event()
        self._claimed_once = asyncio.Event()  # the first claim has returned (or failed)
        self._started = False
        self._registered = False  # the worker row exists (see _register)
        self._background: list[asyncio.Task[None]] = []
        self._fetch_task: asyncio.Task[None] | None = None
        self._pool = self._make_pool(min_size=2, max_size=6)
        # The claim and finish statements only, with reused generic plans (db.GENERIC_PLANS).
        self._hot_pool = self._make_pool(min_size=1, max_size=2, generic_plans=True)
        # Redis extras (each has a Postgres path): job events, rate limits, wake-ups.
        self._events = Publisher(settings.redis_url, self._pool)
        self._limiter = RateLimiter(settings, self.id, self.queues)
        self._redis_wakeups: RedisWakeups | None = None
        self._completer = Completer(
            self._hot_pool,
            self.clock,
            self.id,
            events=self._events,
            on_written=self._slot_freed.set,  # the fetch loop may wait for the backlog
            fault=fault,
        )
        self._threads = ThreadRunner(self.concurrency + 4)
        self._listener: Listener | None = None
        self._maintenance: Maintenance | None = None

    def _make_pool(
        self, *, min_size: int, max_size: int, generic_plans: bool = False
    ) -> AsyncConnectionPool:
        # No liveness check: every loop of the worker retries on connection errors.
        return make_pool(
            self.settings.require_database_url(),
            "claim",
            self.name,
            min_size=min_size,
            max_size=max_size,
            check=False,
            wait=POOL_WAIT,
            generic_plans=generic_plans,
            pooled=self.settings.transaction_pooling,
        )

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            await self._start()
        finally:
            self._start_done.set()

    async def _start(self) -> None:
        await self._pool.open(wait=False)
        await self._hot_pool.open(wait=False)
        await self._register()
        if self._stopping:
            return  # a signal arrived while we were starting: stop() takes over
        await self._events.start()
        await self._limiter.start(self._pool)
        self._completer.start()
        if self._listen:
            assert self.settings.listen_url is not None
            self._listener = Listener(
                self.settings.listen_url,
                self.name,
                on_jobs=self._on_jobs,
                on_cancel=self._on_cancel_hint,
                on_delayed=self._on_delayed,
                on_reconnect=self._wake.set,
            )
            self._listener.start()
        if self.settings.redis_url is not None and not self._drain:
            self._redis_wakeups = RedisWakeups(
                self.settings.redis_url, on_jobs=self._on_jobs, on_reconnect=self._wake.set
            )
            await self._redis_wakeups.start(self._pool)
        if self._with_maintenance:
            tasks = self._tasks if self._tasks is not None else default_tasks(self.settings)
            self._maintenance = Maintenance(
                self._pool,
                self.clock,
                tasks,
                max_sleep=self.poll_interval,
                pooled=self.settings.transaction_pooling,
            )
            self._background.append(
                asyncio.create_task(self._start_maintenance(), name="pgjobs-maint-start")
            )
        self._background.append(
            asyncio.create_task(
                keep_running("heartbeat loop", self._heartbeat_loop, log), name="pgjobs-beat"
            )
        )
        self._background.append(
            asyncio.create_task(
                keep_running("cancel check loop", self._cancel_check_loop, log),
                name="pgjobs-cancel-check",
            )
        )
        self._fetch_task = asyncio.create_task(
            keep_running("claiming loop", self._fetch_loop, log, stopping=self._stop_requested),
            name="pgjobs-fetch",
        )
        log.info(
            "worker %s started queues=%s concurrency=%d",
            self.id,
            ",".join(self.queues),
            self.concurrency,
        )

    async def _start_maintenance(self) -> None:
        """Start the maintenance loops once the first claim is back (or after a poll
        interval at most): each of them takes a connection and runs a round at once,
        which on a starting worker delayed its first claim by half (more connections
        to open, rounds competing for the same event loop and cores)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._claimed_once.wait(), self.poll_interval)
        if self._maintenance is not None and not self._stopping:
            self._maintenance.start()

    async def run(self) -> None:
        await self._start_or_clean_up()
        await self._stopped.wait()

    async def wait_listening(self, timeout: float = 10.0) -> None:
        """Return once the wake-up listener is connected (tests measure latency)."""
        if self._listener is not None:
            await asyncio.wait_for(self._listener.connected.wait(), timeout)
        if self._redis_wakeups is not None:
            await asyncio.wait_for(self._redis_wakeups.connected.wait(), timeout)

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming, finish or give back running jobs, record, deregister.

        Every step runs even when an earlier one failed, and the pools are closed in
        any case: psycopg_pool's workers ignore cancellation, so a pool left open
        keeps its event loop from ever closing.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()
        self._slot_freed.set()
        try:
            if self._started:
                # Stopping while start() is still running (a signal during start-up):
                # let it finish, or there would be loops left running after stop().
                await self._start_done.wait()
            if self._fetch_task is not None:
                await asyncio.gather(self._fetch_task, return_exceptions=True)
            self._release_ready()
            await self._finish_running(self.grace if grace is None else grace)
            await self._each_step(self._wind_down_steps())
        finally:
            self._threads.close()
            await self._each_step(
                [("closing the pool", self._pool.close), ("closing the pool", self._hot_pool.close)]
            )
            log.info("worker %s stopped after %d jobs", self.id, self.processed)
            self._stopped.set()

    def _wind_down_steps(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("recording outcomes", self._completer.close),
            ("closing the event publisher", self._events.close),
            ("stopping the rate limiter", self._limiter.stop),
            ("stopping background loops", self._cancel_background),
        ]
        if self._maintenance is not None:
            steps.append(("stopping maintenance", self._maintenance.stop))
        if self._listener is not None:
            steps.append(("stopping the listener", self._listener.stop))
        if self._redis_wakeups is not None:
            steps.append(("stopping redis wake-ups", self._redis_wakeups.stop))
        steps.append(("deregistering", self._deregister))
        return steps

    async def _each_step(self, steps: list[tuple[str, Callable[[], Awaitable[None]]]]) -> None:
        for what, step in steps:
            try:
                await step()
            except Exception:
                log.exception("worker %s: %s failed while stopping", self.id, what)

    async def _cancel_background(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _start_or_clean_up(self) -> None:
        # A start that fails half-way has opened pools and started loops: stop them,
        # or they would outlive the worker (and keep its event loop from closing).
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aenter__(self) -> Worker:
        await self._start_or_clean_up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def snapshot(self) -> WorkerState:
        """What the worker holds now: jobs running, claimed ahead, outcomes not yet
        written, runs ended, and whether it claims ahead. Cheap; call it on the worker's
        event loop."""
        run, claim = self._timings.run.value, self._timings.claim.value
        return WorkerState(
            running=len(self._running),
            ready=len(self._ready),
            unrecorded=self._completer.backlog,
            processed=self.processed,
            claims_ahead=self._runs_are_short(),
            run_ms=None if run is None else run * 1000,
            claim_ms=None if claim is None else claim * 1000,
        )

    async def until_idle(self) -> int:
        """(drain mode) Wait until no due job is left, then stop; return jobs run."""
        if self._fetch_task is not None:
            await self._fetch_task
        await self.stop()
        return self.processed

    # ---------------------------------------------------------------- claiming

    async def _fetch_loop(self) -> None:
        delay = ReconnectDelay()
        while not self._stopping:
            free = self._claim_limit()
            if free <= 0 or self._completer.backlog > self._max_backlog:
                await self._await_slots(1, deadline=None)
                continue
            wanted = self._claim_batch()
            if self._running and free < wanted:
                # Claim in batches: a moment lets more runs finish, so one round trip
                # fills many slots instead of a few.
                await self._await_slots(wanted, deadline=CLAIM_BATCH_WAIT)
                if self._stopping:
                    break
                free = self._claim_limit()
                if free <= 0:
                    continue
            self._wake.clear()
            try:
                claimed = await self._claim(free)
            except (psycopg.Error, OSError) as exc:
                self._claimed_once.set()
                log.warning("claiming failed (%s); retrying", exc)
                await asyncio.sleep(delay.next())
                continue
            delay.reset()
            self._claimed_once.set()
            if claimed:
                # Started right after the next claim is sent (or this loop sleeps), so
                # the runs and the database work on the next claim at the same time.
                self._ready.extend(claimed)
                asyncio.get_running_loop().call_soon(self._start_ready)
            if len(claimed) == free or self._suspect is not None:
                continue
            if self._drain:
                if not await self._drain_should_continue(claimed):
                    return
                continue
            await self._wait_for_work()

    def _claim_limit(self) -> int:
        """How many jobs to claim now: one per free slot, plus the jobs claimed ahead
        (see `_claim_ahead`), at most MAX_CLAIM in one statement.

        Nothing while a suspect runs, and nothing while a suspect may be waiting and jobs
        are held: the next claim, made with nothing in flight, takes the suspect."""
        held = len(self._running) + len(self._ready)
        if self._suspect_in_flight() or (self._suspects_waiting and held):
            return 0
        return min(MAX_CLAIM, self.concurrency + self._claim_ahead() - held)

    def _claim_ahead(self) -> int:
        """How many jobs to hold beyond the slots: while runs take less time than a
        claim's round trip, the slots start `concurrency * round trip / run` jobs during
        one round trip, so a job claimed for them waits for a slot less than claiming it
        later would take; no job is held back from other workers, and the database works
        on the next claim while this worker runs the last. At least `concurrency` (so
        the next claim can be on its way while the slots are full), at most MAX_AHEAD.
        Slower runs, and rate limits, get exactly the free slots."""
        if not self._runs_are_short():
            return 0
        run, trip = self._timings.run.value, self._timings.claim.value
        assert run is not None and trip is not None
        ahead = self.concurrency * trip / max(run, 1e-6)
        return min(MAX_AHEAD, max(self.concurrency, math.ceil(ahead)))

    def _claim_batch(self) -> int:
        """How many free places the fetch loop waits for (a short moment) before it
        claims while runs go on: half of what it may hold (at most a full claim), so
        one claim is on its way while the jobs of the other run."""
        return max(1, min(MAX_CLAIM, (self.concurrency + self._claim_ahead()) // 2))

    def _suspect_in_flight(self) -> bool:
        """Whether the suspect this worker claimed still runs or awaits its record: until
        its outcome is written the job is active under this worker, and a death of the
        worker would be charged to it, so no other job may be in flight."""
        if self._suspect is None:
            return False
        if self._suspect in self._held() or self._suspect in self._completer.unrecorded():
            return True
        self._suspect = None
        return False

    def _runs_are_short(self) -> bool:
        return self._timings.runs_are_short() and not self._limiter.active

    async def _await_slots(self, wanted: int, *, deadline: float | None) -> None:
        """Wait until `wanted` more jobs may be claimed, or `deadline` seconds pass. The
        runs that end wake this loop only once enough of them did (see `_start_ready`)."""
        held = len(self._running) + len(self._ready)
        self._held_low = held - wanted + self._claim_limit()
        self._slot_freed.clear()
        try:
            if deadline is None:
                await self._slot_freed.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), deadline)
        finally:
            self._held_low = -1

    async def _drain_should_continue(self, claimed: list[ClaimedJob]) -> bool:
        if claimed or self._running or self._ready:
            if not claimed:
                self._slot_freed.clear()
                await self._slot_freed.wait()
            return True
        # Nothing claimable and nothing running: record outcomes (a retry without
        # backoff makes its job pending again), stage due delayed jobs, look once more.
        await self._completer.wait_flushed()
        async with self._pool.connection() as conn:
            await run_round(conn, Stager(idle=0), self.clock)
        self._suspects_waiting = True
        again = await self._claim(self._claim_limit())
        self._ready.extend(again)
        self._start_ready()
        return bool(again)

    async def _wait_for_work(self) -> None:
        """Sleep until a wake-up for our queues or the jittered poll, whichever first."""
        timeout = self.poll_interval * random.uniform(0.9, 1.1)
        if self._limiter.active:
            # Look again as soon as a rate-limited bucket grants again.
            ready = self._limiter.ready_in()
            timeout = timeout if ready is None else min(timeout, ready + 0.001)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _claim(self, limit: int) -> list[ClaimedJob]:
        """Claim up to `limit` jobs. The completer records outcomes meanwhile, on the
        other connection of the same pool: on two cores, a claim and a finish running
        side by side beat one statement doing both (one round trip and one commit per
        cycle) by a third. With rate limits, the limiter claims (see pgjobs/limits.py).
        With nothing in flight and a suspect maybe waiting, the suspect comes first."""
        if self._fault is not None:
            self._fault("claim")
        if self._suspects_waiting and not self._held() and not self._suspect_in_flight():
            suspect = await self._claim_suspect()
            if suspect:
                return suspect
            self._suspects_waiting = False
        if self._limiter.active:
            limited = await self._limiter.claim(self._pool, limit, self.clock)
            return self._runnable([ClaimedJob.from_row(row) for row in limited])
        params = {
            "now": self.clock.sql_now(),
            "queues": self.queues,
            "limit": limit,
            "worker": self.id,
        }
        async with self._hot_pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            # The round trip alone: a checkout that waits for a new connection (at start,
            # after an outage) would make runs look short for many claims to come.
            started = time.perf_counter()
            await cur.execute(query("claim_jobs"), params)
            rows = await cur.fetchall()
            elapsed = time.perf_counter() - started
        self._timings.claim.add(elapsed)
        if rows and log.isEnabledFor(logging.DEBUG):
            log.debug("claimed %d jobs in %.1f ms", len(rows), elapsed * 1000)
        return self._runnable([ClaimedJob.from_row(row) for row in rows])

    async def _claim_suspect(self) -> list[ClaimedJob]:
        """Claim one suspect to run alone. Its run is not rate limited: a suspect is a
        job whose earlier run was cut short by its worker's death."""
        params = {"now": self.clock.sql_now(), "queues": self.queues, "worker": self.id}
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("claim_suspect"), params)
            rows = await cur.fetchall()
        claimed = self._runnable([ClaimedJob.from_row(row) for row in rows])
        if claimed:
            self._suspect = claimed[0].id
            log.info("claimed suspect job id=%s to run alone", self._suspect)
        return claimed

    def _runnable(self, claimed: list[ClaimedJob]) -> list[ClaimedJob]:
        """The claimed jobs that can run; the others fail for good. A job whose stored
        payload or backoff could not be decoded (see jsonlimits) would fail the same way
        on every attempt, so it is not retried."""
        runnable = []
        for job in claimed:
            reason = _undecodable(job)
            if reason is None:
                runnable.append(job)
                continue
            log.warning("failing job %s: %s", job.id, reason, extra={"job": job_fields(job)})
            outcome = Outcome(job.id, job.attempts, "failed", message=reason)
            outcome.queue, outcome.type = job.queue, job.type
            self._completer.add(outcome)
        return runnable

    # ---------------------------------------------------------------- running

    def _start_ready(self) -> None:
        while self._ready and len(self._running) < self.concurrency and not self._stopping:
            self._launch(self._ready.popleft())
        # Wake the fetch loop if it waits for this few held jobs (see _await_slots).
        if self._held_low < 0 or len(self._running) + len(self._ready) <= self._held_low:
            self._slot_freed.set()

    def _release_ready(self) -> None:
        """Give back the claimed jobs that never started (shutdown): pending again, their
        attempt not used."""
        while self._ready:
            job = self._ready.popleft()
            self._completer.add(Outcome(job.id, job.attempts, "release"))

    def _launch(self, job: ClaimedJob) -> None:
        if job.cancel_requested_at is not None:
            # Cancelled between its claim and its start: it never runs.
            self._cancel_unstarted(job)
            return
        handle = RunHandle(self, job)
        ctx = JobContext(
            id=job.id,
            type=job.type,
            queue=job.queue,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            payload=job.payload,
            priority=job.priority,
            timeout_ms=job.timeout_ms,
            created_at=job.created_at,
            worker_id=self.id,
            app=self.app,
            _type_logger=self._job_logger(job.type),
            _control=handle,
        )
        execution = Execution(
            job, self.app.handlers.get(job.type), ctx, self.settings, self._threads
        )
        task = asyncio.create_task(self._run(execution, handle), name=f"pgjobs-job-{job.id}")
        self._running[job.id, job.attempts] = (task, execution)

    def _job_logger(self, job_type: str) -> logging.Logger:
        # logging.getLogger takes a lock on every call: once per type is enough.
        logger = self._job_loggers.get(job_type)
        if logger is None:
            logger = self._job_loggers[job_type] = logging.getLogger(f"pgjobs.job.{job_type}")
        return logger

    async def _run(self, execution: Execution, handle: RunHandle) -> None:
        job = execution.job
        started = time.perf_counter()
        try:
            outcome = await execution.run()
        except asyncio.CancelledError:
            outcome = Outcome(job.id, job.attempts, "release")
        except Exception as exc:  # a bug of ours, not the handler's: never lose the job
            outcome = self._internal_error(job, exc)
        finally:
            handle.finish()
            self._running.pop((job.id, job.attempts), None)
            self._timings.run.add(time.perf_counter() - started)
            self._start_ready()
        self._ended(execution, handle, outcome)

    def _internal_error(self, job: ClaimedJob, exc: Exception) -> Outcome:
        log.error(
            "internal error running job %s", job.id, exc_info=exc, extra={"job": job_fields(job)}
        )
        return Outcome(job.id, job.attempts, "retry", message=repr(exc), delay_ms=1000)

    def _ended(self, execution: Execution, handle: RunHandle, outcome: Outcome) -> None:
        """Hand a run's outcome to the completer."""
        job = execution.job
        outcome.queue, outcome.type = job.queue, job.type
        outcome.progress = handle.latest_progress
        outcome.logs = execution.ctx.log_lines()
        # A completion made inside the handler's transaction is recorded by its commit.
        # Any other ending is recorded here, even after complete_in: a handler that
        # raised did not commit (or committed and then failed, which the fence drops).
        if outcome.kind != "completed" or not execution.ctx.completed_in_transaction:
            self._completer.add(outcome)
        elif handle.publish_completion:
            self._events.emit([JobEvent("completed", job.id, job.queue, job.type, "completed")])
        self.processed += 1
        _log_outcome(job, outcome)

    async def _finish_running(self, grace: float) -> None:
        if not self._running:
            return
        tasks = [task for task, _ in self._running.values()]
        _, unfinished = await asyncio.wait(tasks, timeout=grace)
        for task, execution in list(self._running.values()):
            if task in unfinished:
                execution.released = True
                execution.ctx.mark_cancelled()
                task.cancel()
        if unfinished:
            log.warning("giving back %d unfinished jobs after the grace period", len(unfinished))
            await asyncio.gather(*unfinished, return_exceptions=True)

    # ---------------------------------------------------------------- signals

    def _on_jobs(self, queue: str) -> None:
        if queue in self.queues:
            self._wake.set()

    def _on_delayed(self) -> None:
        if self._maintenance is not None:
            self._maintenance.poke("stage")

    def _on_cancel_hint(self, payload: str) -> None:
        """A cancel notification. Any database login may send one, so it only makes the
        worker read which of its jobs were asked to cancel; the row decides. It names the
        worker (older releases named the job): others' are ignored without a query."""
        held = self._held()
        if held and (payload == str(self.id) or payload in {str(i) for i in held}):
            self._cancel_hinted.set()

    async def _cancel_check_loop(self) -> None:
        while True:
            await self._cancel_hinted.wait()
            self._cancel_hinted.clear()
            held = self._held()
            if not held:
                continue
            try:
                async with (
                    self._pool.connection() as conn,
                    conn.cursor(row_factory=dict_row) as cur,
                ):
                    await cur.execute(
                        query("cancel_requested_runs"), {"worker": self.id, "ids": list(held)}
                    )
                    requested = [row["id"] for row in await cur.fetchall()]
            except (psycopg.Error, OSError) as exc:
                # The heartbeat reads the same flag, so the cancel is only late.
                log.warning("checking for cancelled jobs failed (%s)", exc)
                continue
            for job_id in requested:
                self._on_cancel(job_id)

    def _on_cancel(self, job_id: UUID) -> None:
        runs = [run for (running_id, _), run in self._running.items() if running_id == job_id]
        if not runs:
            self._cancel_ready(job_id)
            return
        for task, execution in runs:
            if not execution.cancel_requested:
                log.info("cancelling running job id=%s", job_id)
                execution.cancel_requested = True
                execution.ctx.mark_cancelled()
                task.cancel()

    def _cancel_ready(self, job_id: UUID) -> None:
        for job in self._ready:
            if job.id == job_id:
                self._ready.remove(job)
                self._cancel_unstarted(job)
                return

    def _cancel_unstarted(self, job: ClaimedJob) -> None:
        log.info("cancelling job id=%s before it started", job.id)
        outcome = Outcome(job.id, job.attempts, "cancelled", message="cancelled")
        outcome.queue, outcome.type = job.queue, job.type  # for its job event
        self._completer.add(outcome)

    # ---------------------------------------------------------------- lease

    async def _register(self) -> None:
        delay = ReconnectDelay()
        schema_missing = False
        while True:
            try:
                await self._heartbeat()
                self._registered = True
                if schema_missing:
                    log.info("the pgjobs schema is installed now: starting")
                return
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction) as exc:
                # A database nobody has run `pgjobs init` on yet (a deployment that starts
                # workers before its migration step): said once, then waited for quietly,
                # so the one line that matters is not buried under a retry per second.
                if self._stopping:
                    return
                pause = delay.next()
                if not schema_missing:
                    schema_missing = True
                    log.error(
                        "the database at %s has no pgjobs schema (%s): run `pgjobs init`; "
                        "waiting for it",
                        mask_urls(self.settings.require_database_url()),
                        _first_line(exc),
                    )
                else:
                    log.debug("still no pgjobs schema (%s); retrying", _first_line(exc))
            except (psycopg.Error, OSError) as exc:
                if self._stopping:
                    return
                pause = delay.next()
                log.warning("cannot register worker (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), pause)
            if self._stopping:
                return

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if self._fault is not None:
                self._fault("heartbeat")
            try:
                await self._heartbeat()
            except (psycopg.Error, OSError) as exc:
                log.warning("heartbeat failed (%s); will retry", exc)

    async def _heartbeat(self) -> None:
        # Runs in progress or awaiting their record before the query: a run that ends
        # and is recorded while the query is in flight is no orphan.
        known = self._held() | self._completer.unrecorded()
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                query("heartbeat_worker"),
                {
                    "now": self.clock.sql_now(),
                    "id": self.id,
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "queues": self.queues,
                    "concurrency": self.concurrency,
                    "version": __version__,
                    "in_flight": len(self._running) + len(self._ready),
                    "processed": self.processed,
                    "stopping": self._stopping,
                    "grace_ms": max(ORPHAN_GRACE_MS, 2 * self.settings.heartbeat_interval_ms),
                },
            )
            held = await cur.fetchall()
        for row in held:
            if row["cancel"]:
                self._on_cancel(row["id"])
        settled = [(row["id"], row["attempts"]) for row in held if row["settled"]]
        self._give_back_orphans(settled, known)
        await self._look_for_suspects()

    async def _look_for_suspects(self) -> None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("suspects_waiting"), {"queues": self.queues})
            row = await cur.fetchone()
        waiting = bool(row and row["waiting"])
        if not self._registered:
            # The first reading, at registration, replaces the assumption the worker
            # starts with: with no suspect waiting, its first claim is not preceded by
            # a claim of one that finds none (a round trip before the first job).
            self._suspects_waiting = waiting
            return
        if waiting and not self._suspects_waiting:
            self._suspects_waiting = True
            self._wake.set()
            self._slot_freed.set()

    def _give_back_orphans(self, held: list[tuple[UUID, int]], known: set[UUID]) -> None:
        """Jobs the database says this worker holds, that it is not running and has no
        outcome for: a claim that committed while its answer was lost (the connection
        died in between). The rescuer never takes them, since this worker is alive and
        heartbeating, so the worker gives them back itself, fenced on the run token and
        without using up the attempt (the handler never ran)."""
        if not held:
            return
        known = known | self._held() | self._completer.unrecorded()
        for job_id, attempt in held:
            if job_id in known:
                continue
            log.warning("giving back job %s: claimed by this worker but never received", job_id)
            self._completer.add(Outcome(job_id, attempt, "release"))

    def _held(self) -> set[UUID]:
        """Jobs this worker claimed and has not finished running."""
        return {job_id for job_id, _ in self._running} | {job.id for job in self._ready}

    async def _deregister(self) -> None:
        if not self._registered:
            return  # stopped while waiting to register: there is no row to remove
        try:
            async with self._pool.connection() as conn:
                await conn.execute(query("deregister_worker"), {"id": self.id})
        except (psycopg.Error, OSError) as exc:
            # The rescuer will give the jobs back once the lease expires.
            log.warning("could not deregister worker %s (%s)", self.id, exc)

    # ---------------------------------------------------------------- run support

    async def write_progress(self, job: ClaimedJob, percent: int, message: str | None) -> None:
        route = self._events.route()
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                query("update_progress"),
                {
                    "id": job.id,
                    "attempt": job.attempts,
                    "progress": percent,
                    "message": message,
                    "notify_events": route == "sql",
                },
            )
            row = await cur.fetchone()
        if row is not None and route == "redis":
            event = JobEvent("progress", job.id, job.queue, job.type, "active", row["progress"])
            self._events.emit([event])

    async def complete_in(
        self,
        job: ClaimedJob,
        conn: psycopg.AsyncConnection[Any],
        result_json: str,
        duration_ms: int,
        progress: tuple[int, str | None] | None,
    ) -> bool:
        """Returns whether the completed event is still to be published (to Redis,
        once the handler's transaction committed)."""
        route = self._events.route()
        async with conn.cursor() as cur:
            await cur.execute(
                query("complete_in_transaction"),
                {
                    "now": self.clock.sql_now(),
                    "id": job.id,
                    "attempt": job.attempts,
                    "result": result_json,
                    "duration_ms": duration_ms,
                    "progress_reported": progress is not None,
                    "progress_message": progress[1] if progress is not None else None,
                    "notify_events": route == "sql",
                },
            )
            if await cur.fetchone() is None:
                raise StaleRun(f"run {job.attempts} of job {job.id} no longer owns the job")
        return route == "redis"

    async def parent_results(self, job: ClaimedJob) -> dict[str, Any]:
        if not job.depends_on:
            return {}
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("parent_results"), {"ids": job.depends_on})
            return {str(row["job_id"]): row["result"] for row in await cur.fetchall()}


class RunHandle:
    """The worker side of one run (see context.RunControl): throttled, fenced progress
    writes and in-transaction completion. After the run ends every call is a no-op, so
    an abandoned handler thread cannot touch a later run of the same job."""

    def __init__(self, worker: Worker, job: ClaimedJob) -> None:
        self._worker = worker
        self._job = job
        self._loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        self._last_write = 0.0
        self._pending: tuple[int, str | None] | None = None
        self._flusher: asyncio.TimerHandle | None = None
        self._finished = False
        self.publish_completion = False
        # The handler's latest report, written or not: a write still throttled (or
        # scheduled from a handler thread) when the run ends would otherwise be lost,
        # so the run's outcome carries it.
        self.latest_progress: tuple[int, str | None] | None = None

    def finish(self) -> None:
        self._finished = True
        if self._flusher is not None:
            self._flusher.cancel()

    async def write_progress(self, percent: int, message: str | None) -> None:
        if self._finished:
            return
        self.latest_progress = (percent, message)
        await self._write(percent, message)

    async def _write(self, percent: int, message: str | None) -> None:
        if self._finished:
            return
        now = time.monotonic()
        if now - self._last_write >= PROGRESS_MIN_INTERVAL:
            self._last_write = now
            self._pending = None
            await self._worker.write_progress(self._job, percent, message)
            return
        # Throttled: keep the latest value and write it when the interval is over.
        self._pending = (percent, message)
        if self._flusher is None:
            wait = PROGRESS_MIN_INTERVAL - (now - self._last_write)
            self._flusher = self._loop.call_later(wait, self._flush_pending)

    def _flush_pending(self) -> None:
        self._flusher = None
        if self._pending is not None and not self._finished:
            percent, message = self._pending
            task = asyncio.ensure_future(self._write(percent, message))
            task.add_done_callback(_log_task_error)

    def write_progress_threadsafe(self, percent: int, message: str | None) -> None:
        def schedule() -> None:
            asyncio.ensure_future(self._write(percent, message)).add_done_callback(_log_task_error)

        if not self._finished:
            # Set from the handler's thread, in the order of its calls (the scheduled
            # writes may run later than the run's end).
            self.latest_progress = (percent, message)
            self._loop.call_soon_threadsafe(schedule)

    async def complete_in(self, conn: psycopg.AsyncConnection[Any], result: Any) -> None:
        if self._finished:
            raise StaleRun(f"the run of job {self._job.id} is over")
        duration = round((time.monotonic() - self._started) * 1000)
        self.publish_completion = await self._worker.complete_in(
            self._job, conn, json.dumps(result), duration, self.latest_progress
        )

    async def parent_results(self) -> dict[str, Any]:
        return await self._worker.parent_results(self._job)


def _undecodable(job: ClaimedJob) -> str | None:
    for what, value in (("payload", job.payload), ("backoff", job.backoff)):
        if isinstance(value, UndecodableJson):
            return f"the job's {what} cannot be decoded: {value.reason}"
    return None


def _log_task_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("progress write failed: %s", task.exception())


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def job_fields(job: ClaimedJob, outcome: Outcome | None = None) -> dict[str, Any]:
    """The `job` extra of a log record about `job`: JSON log lines carry these as
    fields of their own, so a log search can select by job id, type or queue."""
    fields: dict[str, Any] = {
        "job_id": str(job.id),
        "type": job.type,
        "queue": job.queue,
        "attempt": job.attempts,
        "max_attempts": job.max_attempts,
    }
    if outcome is not None:
        fields["outcome"] = outcome.kind
        if outcome.duration_ms is not None:
            fields["duration_ms"] = outcome.duration_ms
        if outcome.kind == "retry":
            fields["retry_in_ms"] = outcome.delay_ms
    return fields


def _log_outcome(job: ClaimedJob, outcome: Outcome) -> None:
    if outcome.kind == "completed" and not log.isEnabledFor(logging.INFO):
        return  # the common case: nothing to format
    fields = (
        f"id={job.id} type={job.type} queue={job.queue} attempt={job.attempts}/{job.max_attempts}"
    )
    extra = {"job": job_fields(job, outcome)}
    if outcome.kind == "completed":
        log.info("job completed %s duration_ms=%s", fields, outcome.duration_ms, extra=extra)
    elif outcome.kind == "retry":
        log.warning(
            "job failed, retrying %s in_ms=%d error=%r",
            fields,
            outcome.delay_ms,
            outcome.message,
            extra=extra,
        )
    elif outcome.kind == "failed":
        log.warning("job failed %s error=%r", fields, outcome.message, extra=extra)
    else:
        log.info("job %s %s", outcome.kind, fields, extra=extra)


async def drain(app: WorkerHost, queues: Sequence[str], concurrency: int | None = None) -> int:
    worker = Worker(app, queues=queues, concurrency=concurrency, drain=True)
    await worker.start()
    return await worker.until_idle()
