"""Leader-elected maintenance: stage delayed jobs, rescue stalled ones, prune old ones,
and whatever other tasks are registered (cron fires).

Every worker runs these loops, but a round only acts while holding its task's
transaction-scoped advisory lock, taken at the start of the round's transaction: one
worker acts at a time, and a leader that dies mid-round releases the lock with its
connection. A task says how long until it wants to run again; the loop sleeps that long
(capped, so settings changes and missed wake-ups are noticed) or until poked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from pgjobs.backoff import ReconnectDelay
from pgjobs.clock import Clock
from pgjobs.config import Settings
from pgjobs.producer.dependencies import DependencySweeper
from pgjobs.queries import query
from pgjobs.retention import cursor_after, delete_jobs
from pgjobs.schedules.task import CronTask

log = logging.getLogger("pgjobs.maintenance")

STAGE_BATCH = 5000
PRUNE_BATCH = 2000
# Vacuum job_ready (the claim's table) once this many dead rows pile up, and `jobs` once
# this many and a tenth of its live rows have.
READY_VACUUM_DEAD_ROWS = 1_000
VACUUM_DEAD_ROWS = 20_000
VACUUM_LIVE_FRACTION = 0.1
VACUUM_CHECK_INTERVAL = 0.5
VACUUM_NOT_OWNER_RECHECK = 600.0
READY_SWEEP_INTERVAL = 60.0
# How long a round's transaction may sit idle (see try_leader_lock): the longest a
# leader cut off from the database keeps the others from taking over its task.
LEADER_IDLE_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class VacuumTarget:
    """One table the Vacuumer looks after: its statement, and the name and leader lock of
    the task that vacuums it alone (Vacuumer.of)."""

    statement: str
    task_name: str
    lock_key: int


VACUUM_TARGETS = {
    "job_ready": VacuumTarget("vacuum_ready", "vacuum-ready", 7423510106),
    "jobs": VacuumTarget("vacuum_jobs", "vacuum-jobs", 7423510108),
}


class MaintenanceTask(Protocol):
    name: str
    lock_key: int

    async def run(self, conn: psycopg.AsyncConnection[Any], clock: Clock) -> float:
        """One round inside `conn`'s open transaction, holding the leader lock.

        Returns the number of seconds until the next round is wanted."""
        ...


def seconds_until(when: datetime | None, now: datetime, default: float) -> float:
    if when is None:
        return default
    return max(0.0, (when - now).total_seconds())


class Stager:
    """delayed -> pending when run_at comes; sleeps until the earliest run_at."""

    name = "stage"
    lock_key = 7423510101

    def __init__(self, idle: float) -> None:
        self.idle = idle

    async def run(self, conn: psycopg.AsyncConnection[Any], clock: Clock) -> float:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                query("stage_due_jobs"), {"now": clock.sql_now(), "limit": STAGE_BATCH}
            )
            row = await cur.fetchone()
        assert row is not None
        if row["staged"]:
            log.debug("staged %d delayed jobs", row["staged"])
        if row["staged"] >= STAGE_BATCH:
            return 0.0
        return seconds_until(row["next_run_at"], row["now"], self.idle)


class Rescuer:
    """Takes back the jobs of workers that lost their lease, as suspects that run alone
    from then on; a suspect whose worker died while it ran alone is charged a stall, and
    fails for good after more than `max_stalled` of them (see rescue_stalled_jobs)."""

    name = "rescue"
    lock_key = 7423510102

    def __init__(self, interval: float, lock_ms: int, max_stalled: int) -> None:
        self.interval = interval
        self.lock_ms = lock_ms
        self.max_stalled = max_stalled

    async def run(self, conn: psycopg.AsyncConnection[Any], clock: Clock) -> float:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                query("rescue_stalled_jobs"),
                {"now": clock.sql_now(), "lock_ms": self.lock_ms, "max_stalled": self.max_stalled},
            )
            row = await cur.fetchone()
        if row and (row["requeued"] or row["failed"]):
            log.warning(
                "rescued jobs of dead workers: %d back to pending to run alone (%d of them "
                "charged a stall), %d failed after too many stalls",
                row["requeued"],
                row["charged"],
                row["failed"],
            )
        return self.interval


class ReadySweeper:
    """Keeps job_ready true to `jobs` where its triggers could not: a row left behind by
    a job made active outside a claim (a hand-written UPDATE) is removed, and a pending
    job that has no row (its triggers disabled during a data-only restore) gets one, so
    no job waits forever unseen. Claims never trust a stale row: they check the jobs row."""

    name = "ready-sweep"
    lock_key = 7423510107

    def __init__(self, interval: float = READY_SWEEP_INTERVAL) -> None:
        self.interval = interval

    async def run(self, conn: psycopg.AsyncConnection[Any], clock: Clock) -> float:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("sweep_job_ready"))
            row = await cur.fetchone()
        if row and row["added"]:
            log.warning("found %d pending jobs missing from job_ready: added", row["added"])
        if row and row["removed"]:
            log.info("removed %d rows of job_ready whose jobs are not pending", row["removed"])
        return self.interval


class Pruner:
    """Deletes finished jobs older than JOBS_CLEAN_COMPLETED_AFTER / _FAILED_AFTER.

    A pass walks the old jobs in (completed_at, id) order, one batch per round, and
    starts again from the oldest once it reaches the end. Jobs that a table of the
    user's own still references (a foreign key without ON DELETE CASCADE / SET NULL)
    stay, and the pass moves on past them; each such constraint is reported once."""

    name = "prune"
    lock_key = 7423510103

    def __init__(self, interval: float, completed_ms: int, failed_ms: int) -> None:
        self.interval = interval
        self.completed_ms = completed_ms
        self.failed_ms = failed_ms
        self._after: tuple[datetime | None, UUID | None] = (None, None)
        self._reported: set[tuple[str, str]] = set()

    async def run(self, conn: psycopg.AsyncConnection[Any], clock: Clock) -> float:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                query("prune_finished_jobs"),
                {
                    "now": clock.sql_now(),
                    "completed_s": self.completed_ms / 1000,
                    "failed_s": self.failed_ms / 1000,
                    "after_at": self._after[0],
                    "after_id": self._after[1],
                    "batch": PRUNE_BATCH,
                },
            )
            batch = await cur.fetchall()
        deleted = await delete_jobs(conn, [row["id"] for row in batch])
        if deleted.jobs:
            log.info("pruned %d finished jobs", len(deleted.jobs))
        for skipped in deleted.skipped_list():
            key = (skipped.constraint, skipped.table)
            if key not in self._reported:
                self._reported.add(key)
                log.warning("pruning keeps finished jobs: %s", skipped.reason())
        # A full batch means more are waiting: come back at once, in a new transaction.
        if len(batch) >= PRUNE_BATCH:
            self._after = cursor_after(batch)
            return 0.0
        self._after = (None, None)
        return self.interval


class Vacuumer:
    """Vacuums job_ready as soon as a thousand dead rows pile up, and `jobs` at about
    autovacuum's pace, without waiting for autovacuum's next visit.

    Every claim reads job_ready's claim index from its oldest entry, and the entries of
    claimed jobs stay in the index until a vacuum removes them: between vacuums each claim
    reads further. Autovacuum comes at most once per autovacuum_naptime (a minute by
    default), by which time a busy queue has left hundreds of thousands of them. The
    table holds pending jobs only, so its vacuum costs milliseconds. `jobs` keeps the
    history, and a pass over its indexes grows with it: it is vacuumed for its heap and
    those indexes once a tenth of its rows are dead.

    VACUUM cannot run inside a transaction: this round takes a session-level leader
    lock itself (`own_lock`), outside the transaction run_round would open.

    `pooled` (JOBS_POOL_MODE=transaction): a session lock would stay behind on whichever
    server connection the pooler picked, and a transaction-scoped one is gone before a
    VACUUM can start. Every worker then checks, and VACUUM's own SKIP_LOCKED is the
    leader election: of workers that decide at once, one vacuums and the rest skip.
    A worker that read the statistics just before another's vacuum ended may vacuum
    again right after it; that costs one more pass, never correctness.

    `tables` limits a Vacuumer to some of the two tables; `Vacuumer.of(table)` makes the
    task of one table, with its own name and leader lock (VACUUM_TARGETS). The workers
    run one per table (default_tasks): a pass over
    `jobs` takes seconds on a large history (20 s at three million rows here), and
    claims slowed down while job_ready waited behind it; VACUUM's own snapshot holds
    back no other vacuum, so the two run side by side."""

    name = "vacuum"
    lock_key = 7423510106
    own_lock = True

    def __init__(
        self,
        interval: float = VACUUM_CHECK_INTERVAL,
        *,
        pooled: bool = False,
        tables: Collection[str] = tuple(VACUUM_TARGETS),
    ) -> None:
        self.interval = interval
        self.pooled = pooled
        self.tables = frozenset(tables)
        if not self.tables or not self.tables <= VACUUM_TARGETS.keys():
            raise ValueError(f"tables must be some of {tuple(VACUUM_TARGETS)}, not {tables!r}")
        if len(self.tables) == 1:
            # A task of one table leads under that table's own name and lock, so the two
            # tasks never wait for each other, however they were made.
            [target] = [VACUUM_TARGETS[table] for table in self.tables]
            self.name, self.lock_key = target.task_name, target.lock_key

    @classmethod
    def of(cls, table: str, *, pooled: bool = False) -> Vacuumer:
        """The task that vacuums `table` alone, under its own name and leader lock."""
        return cls(pooled=pooled, tables=[table])

    async def run(self, conn: psycopg.AsyncConnection[Any], clock: Clock) -> float:
        async with conn.cursor(row_factory=dict_row) as cur:
            if self.pooled:
                return await self._vacuum_if_due(cur)
            await cur.execute(query("vacuum_leader_lock"), {"key": self.lock_key})
            row = await cur.fetchone()
            if not row or not row["acquired"]:
                return self.interval
            try:
                return await self._vacuum_if_due(cur)
            finally:
                await cur.execute(query("vacuum_leader_unlock"), {"key": self.lock_key})

    async def _vacuum_if_due(self, cur: psycopg.AsyncCursor[dict[str, Any]]) -> float:
        await cur.execute(query("vacuum_dead_tuples"))
        due = [
            row
            for row in await cur.fetchall()
            if vacuumed_table(row) in self.tables and vacuum_due(row)
        ]
        if not due:
            return self.interval
        if not all(row["may_vacuum"] for row in due):
            # Only a table's owner may vacuum it: autovacuum alone does, as before.
            log.debug("not the owner of the job tables: leaving their vacuuming to autovacuum")
            return VACUUM_NOT_OWNER_RECHECK
        for row in due:
            statement = VACUUM_TARGETS[vacuumed_table(row)].statement
            await cur.execute(query(statement), prepare=False)
            log.debug("vacuumed %s (%d dead rows)", statement, row["dead"])
        return self.interval


def vacuumed_table(row: dict[str, Any]) -> str:
    """The table of a vacuum_dead_tuples row."""
    return "job_ready" if row["ready"] else "jobs"


def vacuum_due(row: dict[str, Any]) -> bool:
    """Whether the table of a vacuum_dead_tuples row has enough dead rows to vacuum."""
    if row["ready"]:
        return bool(row["dead"] >= READY_VACUUM_DEAD_ROWS)
    return bool(row["dead"] >= max(VACUUM_DEAD_ROWS, VACUUM_LIVE_FRACTION * row["live"]))


def default_tasks(s: Settings) -> list[MaintenanceTask]:
    tasks: list[MaintenanceTask] = [
        Stager(idle=s.poll_interval_ms / 1000),
        Rescuer(s.stalled_interval_ms / 1000, s.lock_duration_ms, s.max_stalled_count),
        Pruner(60.0, s.clean_completed_after_ms, s.clean_failed_after_ms),
        DependencySweeper(s.stalled_interval_ms / 1000),
        CronTask(s),
        *(Vacuumer.of(table, pooled=s.transaction_pooling) for table in VACUUM_TARGETS),
        ReadySweeper(),
    ]
    return tasks


async def run_round(
    conn: psycopg.AsyncConnection[Any], task: MaintenanceTask, clock: Clock, *, pooled: bool = False
) -> float | None:
    """One round of `task` if this connection wins its lock; None if another leads.

    `pooled`: the connection carries no session timeouts (db.connect_kwargs), so the
    round's transaction sets its own: it holds the leader lock and row locks."""
    if getattr(task, "own_lock", False):
        return await task.run(conn, clock)
    async with conn.transaction():
        async with conn.cursor(row_factory=dict_row) as cur:
            if pooled:
                await cur.execute(query("transaction_timeouts"))
            await cur.execute(
                query("try_leader_lock"),
                {"key": task.lock_key, "idle_ms": str(LEADER_IDLE_TIMEOUT_MS)},
            )
            row = await cur.fetchone()
        if not row or not row["acquired"]:
            return None
        return await task.run(conn, clock)


class Maintenance:
    """Runs each task in its own loop on the worker's pool."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        clock: Clock,
        tasks: list[MaintenanceTask],
        *,
        max_sleep: float,
        pooled: bool = False,
    ) -> None:
        self._pool = pool
        self._pooled = pooled
        self._clock = clock
        self.tasks = tasks
        self._max_sleep = max_sleep
        self._pokes = {task.name: asyncio.Event() for task in tasks}
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._loop(task), name=f"pgjobs-maint-{task.name}")
            for task in self.tasks
        ]

    def poke(self, name: str) -> None:
        """Run task `name` now instead of at its planned time."""
        event = self._pokes.get(name)
        if event is not None:
            event.set()

    async def stop(self) -> None:
        self._stopping = True
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)

    async def _loop(self, task: MaintenanceTask) -> None:
        delay = ReconnectDelay(0.5, 10.0)
        poke = self._pokes[task.name]
        while not self._stopping:
            poke.clear()
            try:
                async with self._pool.connection() as conn:
                    wanted = await run_round(conn, task, self._clock, pooled=self._pooled)
                delay.reset()
            except (psycopg.Error, OSError) as exc:
                log.warning("maintenance %s failed (%s); retrying", task.name, exc)
                wanted = delay.next()
            except Exception:
                # Log-and-continue: a bug in one round must not stop maintenance.
                log.exception("maintenance %s crashed; retrying", task.name)
                wanted = delay.next()
            sleep = self._max_sleep if wanted is None else min(wanted, self._max_sleep)
            if sleep > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(poke.wait(), sleep)
