"""The cron maintenance task: enqueue every due fire of every schedule exactly once.

A round runs inside the maintenance leader's transaction. It reads the due schedules,
decides their fires with the pure `schedules.due_fires`, and applies the whole plan in
one statement (`cron_fire`): each fire's (schedule, fire_time) row and its job are
inserted together, the job only when the fire row is new, and the schedules' next_run_at
and last_run_at move on. The fires table's primary key, not the leader lock, is what
guarantees a fire is never enqueued twice; the lock only avoids wasted work.

A schedule whose stored next_run_at is not a slot of its current expression was edited
with the table's trigger off (the trigger moves next_run_at with any SQL edit): its
next_run_at is recomputed from now, like an edit through the API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from pgjobs.clock import Clock
from pgjobs.config import Settings
from pgjobs.errors import ValidationError
from pgjobs.producer.options import NewJob
from pgjobs.producer.statements import Statement, fetch_all_async, fetch_one_async
from pgjobs.queries import query
from pgjobs.schedules.cron import Cron, Fire, due_fires, parse_cron, parse_timezone
from pgjobs.schedules.store import Schedule, job_for_fire

log = logging.getLogger("pgjobs.cron")

# Fire records guard against a round that planned a slot before another round fired
# it: seconds. A day of history is kept for operators.
FIRE_RETENTION = timedelta(days=1)
PRUNE_EVERY = timedelta(minutes=1)
PRUNE_BATCH = 5000
_ONE_MICROSECOND = timedelta(microseconds=1)


_SCHEDULE_KEYS: tuple[str, ...] = ("ids", "seen_nexts", "seen_updated", "new_nexts", "last_fires")
_FIRE_KEYS: tuple[str, ...] = (
    "f_schedule_ids",
    "f_fire_times",
    "f_job_ids",
    "f_types",
    "f_queues",
    "f_payloads",
    "f_priorities",
    "f_max_attempts",
    "f_timeouts",
    "f_backoffs",
    "f_rate_keys",
    "f_metadatas",
)


@dataclass
class _Batch:
    """The arrays of one `cron_fire` statement."""

    schedules: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in _SCHEDULE_KEYS})
    fires: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in _FIRE_KEYS})

    def add_schedule(
        self, row: dict[str, Any], new_next: datetime, last_fire: datetime | None
    ) -> None:
        s = self.schedules
        s["ids"].append(row["id"])
        s["seen_nexts"].append(row["next_run_at"])
        s["seen_updated"].append(row["updated_at"])
        s["new_nexts"].append(new_next)
        s["last_fires"].append(last_fire)

    def add_fire(self, schedule_id: UUID, at: datetime, job: NewJob) -> None:
        f = self.fires
        f["f_schedule_ids"].append(schedule_id)
        f["f_fire_times"].append(at)
        f["f_job_ids"].append(job.id)
        f["f_types"].append(job.type)
        f["f_queues"].append(job.queue)
        f["f_payloads"].append(job.payload_json)
        f["f_priorities"].append(job.priority)
        f["f_max_attempts"].append(job.max_attempts)
        f["f_timeouts"].append(job.timeout_ms)
        f["f_backoffs"].append(job.backoff_json)
        f["f_rate_keys"].append(job.rate_limit_key)
        f["f_metadatas"].append(job.metadata_json)

    def __bool__(self) -> bool:
        return bool(self.schedules["ids"])

    def statement(self, clock: Clock) -> Statement:
        return Statement(
            query("cron_fire"), {"now": clock.sql_now(), **self.schedules, **self.fires}
        )


class CronTask:
    """Maintenance task `cron`: fires due schedules; wants to run again when the next
    fire is due, at most `max_sleep` seconds later so edits are picked up promptly."""

    name = "cron"
    lock_key = 7423510104

    def __init__(
        self,
        settings: Settings,
        *,
        grace: timedelta | None = None,
        max_sleep: float = 1.0,
        batch_size: int = 100,
    ) -> None:
        self.settings = settings
        if grace is None:
            grace = timedelta(milliseconds=settings.cron_misfire_grace_ms)
        self.grace = grace
        self.max_sleep = max_sleep
        self.batch_size = batch_size
        self._crons: dict[tuple[str, str], Cron] = {}
        # Definitions that cannot be parsed, by schedule id: reported once, then left
        # out of the due query until they are edited.
        self._broken: dict[UUID, tuple[str, str]] = {}
        self._next_prune: datetime | None = None

    async def run(self, conn: psycopg.AsyncConnection[Any], clock: Clock) -> float:
        rows = await fetch_all_async(conn, self._due_statement(clock))
        now: datetime = rows[0]["clock_now"]
        due = [row for row in rows if row["id"] is not None]
        batch = _Batch()
        for row in due:
            self._plan(row, now, batch)
        if batch:
            result = await fetch_one_async(conn, batch.statement(clock))
            assert result is not None
            if result["inserted"]:
                log.debug("cron: enqueued %d jobs", result["inserted"])
            dropped = len(batch.schedules["ids"]) - result["advanced"]
            if dropped:
                log.debug(
                    "cron: %d schedules changed since read; their plans were dropped", dropped
                )
        await self._prune(conn, clock, now)
        if len(due) >= self.batch_size:
            return 0.0
        upcoming: list[datetime] = [
            at for at in [rows[0]["next_future"], *batch.schedules["new_nexts"]] if at
        ]
        if not upcoming:
            return self.max_sleep
        return max(0.0, min(self.max_sleep, (min(upcoming) - now).total_seconds()))

    # ------------------------------------------------------------ planning

    def _due_statement(self, clock: Clock) -> Statement:
        broken = list(self._broken.items())
        return Statement(
            query("cron_due_schedules"),
            {
                "now": clock.sql_now(),
                "limit": self.batch_size,
                "skip_ids": [key for key, _ in broken],
                "skip_crons": [cron for _, (cron, _) in broken],
                "skip_zones": [zone for _, (_, zone) in broken],
            },
        )

    def _plan(self, row: dict[str, Any], now: datetime, batch: _Batch) -> None:
        cron = self._cron(row)
        if cron is None:
            return
        next_due: datetime | None = row["next_run_at"]
        if next_due is not None and cron.next_fire(next_due - _ONE_MICROSECOND) != next_due:
            next_due = None  # edited by hand: start from now, as an API edit would
        if next_due is None:
            batch.add_schedule(row, cron.next_fire(now), None)
            return
        plan = due_fires(
            cron,
            next_due,
            now,
            misfire=row["misfire_policy"],
            grace=self.grace,
            max_catch_up=row["max_catch_up"],
        )
        if plan.missed_since is not None:
            log.warning(
                "schedule %r missed its fires since %s (no worker was leading); "
                "misfire policy %s: %d catch-up job(s)",
                row["name"],
                plan.missed_since.isoformat(),
                row["misfire_policy"],
                sum(1 for fire in plan.fires if fire.catch_up),
            )
        fires = self._jobs(row, plan.fires)
        batch.add_schedule(row, plan.next_run_at, max((f.at for f in plan.fires), default=None))
        for fire, job in fires:
            batch.add_fire(row["id"], fire.at, job)

    def _jobs(self, row: dict[str, Any], fires: tuple[Fire, ...]) -> list[tuple[Fire, NewJob]]:
        schedule = Schedule.from_row(row)
        out: list[tuple[Fire, NewJob]] = []
        try:
            for fire in fires:
                metadata: dict[str, Any] = {
                    "schedule": schedule.name,
                    "fire_time": fire.at.isoformat(),
                }
                if fire.catch_up:
                    metadata["catch_up"] = fire.catch_up
                out.append((fire, job_for_fire(self.settings, schedule, row["payload"], metadata)))
        except ValidationError as exc:
            # Only a hand-edited row can get here (the API validates the same way).
            # Its slots pass unfired rather than blocking the schedule for good.
            log.error("schedule %r cannot fire: %s", schedule.name, exc)
            return []
        return out

    def _cron(self, row: dict[str, Any]) -> Cron | None:
        key = (row["cron_expression"], row["timezone"])
        cron = self._crons.get(key)
        if cron is not None:
            self._broken.pop(row["id"], None)
            return cron
        try:
            cron = Cron(parse_cron(key[0]), parse_timezone(key[1]))
        except ValidationError as exc:
            self._broken[row["id"]] = key
            log.error("schedule %r is skipped until it is fixed: %s", row["name"], exc)
            return None
        if len(self._crons) > 1000:
            self._crons.clear()
        self._crons[key] = cron
        self._broken.pop(row["id"], None)
        return cron

    # ------------------------------------------------------------ housekeeping

    async def _prune(self, conn: psycopg.AsyncConnection[Any], clock: Clock, now: datetime) -> None:
        if (
            self._next_prune is not None
            and self._next_prune - PRUNE_EVERY <= now < self._next_prune
        ):
            return
        self._next_prune = now + PRUNE_EVERY
        async with conn.cursor() as cur:
            await cur.execute(
                query("cron_prune_fires"),
                {
                    "now": clock.sql_now(),
                    "keep_seconds": FIRE_RETENTION.total_seconds(),
                    "limit": PRUNE_BATCH,
                },
            )
