"""Batched, fenced recording of run outcomes.

Outcomes are buffered and written in one `finish_runs` statement per batch: when the
batch is full or a few milliseconds after its first outcome, whichever comes first.
If PostgreSQL is unreachable the outcomes stay buffered and are retried: the fence in
the statement makes a retry after an ambiguous failure harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from pgjobs.backoff import ReconnectDelay, keep_running
from pgjobs.clock import Clock
from pgjobs.context import LogLine
from pgjobs.queries import query
from pgjobs.signals.events import JobEvent, Publisher, Route

OutcomeKind = Literal["completed", "retry", "failed", "snooze", "cancelled", "release"]
RunToken = tuple[UUID, int]  # (job id, attempt): what the finish statements fence on

log = logging.getLogger("pgjobs.worker")


@dataclass(slots=True)
class Outcome:
    job_id: UUID
    attempt: int
    kind: OutcomeKind
    result_json: str | None = None
    duration_ms: int | None = None
    message: str | None = None
    stack: str | None = None
    failure_kind: str = "error"
    delay_ms: int = 0
    # The handler's last progress report (percent, message), recorded with the outcome
    # so that a report still throttled when the run ended is not lost.
    progress: tuple[int, str | None] | None = None
    queue: str = ""  # queue and type: only for the job event of the outcome
    type: str = ""
    logs: list[LogLine] | None = None  # what the run logged through ctx.logger


# Outcome kind -> (event, status it leaves the job in); snoozes and give-backs are no events.
_EVENTS = {
    "completed": ("completed", "completed"),
    "failed": ("failed", "failed"),
    "cancelled": ("cancelled", "cancelled"),
    "retry": ("retrying", ""),
}


class Batch(list[Outcome]):
    """Outcomes written together; remembers where their job events go (see
    events.Publisher.route): NOTIFYed by the statement, published once written, or off."""

    events: Route = "sql"


class Completer:
    """The one writer of a worker's outcomes. It writes on a pool connection of its own,
    side by side with the fetch loop's claims (see Worker._claim)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        clock: Clock,
        worker_id: UUID,
        *,
        max_batch: int = 500,
        max_wait: float = 0.002,
        events: Publisher | None = None,
        on_written: Callable[[], None] | None = None,
        fault: Callable[[str], None] | None = None,
    ) -> None:
        """`fault`: a test seam (see Worker), called with "record" before each write."""
        self._pool = pool
        self._fault = fault
        self._on_written = on_written
        self._events = events
        self._clock = clock
        self._worker_id = worker_id
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._buffer: list[Outcome] = []
        self._writing: Batch = Batch()  # taken from the buffer, transaction not done
        self._has_items = asyncio.Event()
        self._flushed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._keep_logs = True  # false once the database turned out to have no job_logs
        self.recorded = 0
        self.stale = 0

    @property
    def backlog(self) -> int:
        return len(self._buffer) + len(self._writing)

    def add(self, outcome: Outcome) -> None:
        self._buffer.append(outcome)
        self._has_items.set()

    def start(self) -> None:
        self._task = asyncio.create_task(
            keep_running("recording outcomes", self._run, log), name="pgjobs-completer"
        )

    async def close(self, timeout: float = 10.0) -> None:
        """Flush what is buffered (retrying for up to `timeout` s), then stop."""
        self._closing = True
        self._has_items.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.error("could not record %d outcomes before stopping", self.backlog)
                self._task.cancel()

    def unrecorded(self) -> set[UUID]:
        """Jobs whose outcome is buffered or being written: still active in the
        database, though their run is over."""
        return {o.job_id for o in self._buffer} | {o.job_id for o in self._writing}

    def _take(self) -> Batch:
        batch = Batch(self._buffer[: self._max_batch])
        del self._buffer[: len(batch)]
        # Rows are locked in id order everywhere jobs are locked in bulk (creators lock
        # parents that way): the same order here keeps the two from deadlocking.
        batch.sort(key=_by_id)
        batch = self._one_per_run(batch)
        self._writing = batch
        return batch

    def _one_per_run(self, batch: Batch) -> Batch:
        """`batch` with one outcome per run token. A run's end and a give-back of the
        same run (see Worker._give_back_orphans) can meet in one batch: the run did
        happen, so its outcome is kept. Outcomes of different runs of one job all stay;
        the fence applies only the current run's."""
        if len({(o.job_id, o.attempt) for o in batch}) == len(batch):
            return batch
        kept: dict[RunToken, Outcome] = {}
        for outcome in batch:
            token = (outcome.job_id, outcome.attempt)
            other = kept.get(token)
            if other is None or (other.kind == "release" and outcome.kind != "release"):
                kept[token] = outcome
        log.warning("dropped %d outcomes given twice for one run", len(batch) - len(kept))
        self.stale += len(batch) - len(kept)
        return Batch(kept.values())

    def _give_back(self, batch: Batch) -> None:
        """The write of `batch` failed: keep it for the next attempt."""
        self._writing = Batch()
        self._buffer[:0] = batch

    async def _write(self, batch: Batch) -> set[RunToken]:
        logged = self._keep_logs and any(o.logs for o in batch)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            try:
                await cur.execute(
                    query("finish_runs_logged" if logged else "finish_runs"), self.params(batch)
                )
            except psycopg.errors.UndefinedTable:
                if not logged:
                    raise
                # A schema older than this worker (pgjobs init not run since the
                # upgrade) has no job_logs: record the outcomes without their lines.
                log.warning(
                    "the database has no job_logs table (run pgjobs init): handlers' log "
                    "lines are not kept"
                )
                self._keep_logs = False
                await cur.execute(query("finish_runs"), self.params(batch))
            return {(row["id"], row["attempt"]) for row in await cur.fetchall()}

    async def _written(self, batch: Batch, applied: set[RunToken]) -> None:
        """`batch` was written (`applied` = the runs whose outcome was recorded)."""
        self._account(batch, applied)
        if self._events is not None and batch.events == "redis":
            self._events.emit(_job_events(batch, applied))
        self._writing = Batch()
        if self._on_written is not None:
            self._on_written()
        async with self._flushed:
            self._flushed.notify_all()

    async def _run(self) -> None:
        delay = ReconnectDelay()
        while True:
            await self._has_items.wait()
            if not self._buffer:
                self._has_items.clear()
                if self._closing:
                    return
                continue
            if len(self._buffer) < self._max_batch and not self._closing:
                # Let outcomes that finish in the same few milliseconds share the trip.
                await asyncio.sleep(self._max_wait)
            batch = self._take()
            try:
                if self._fault is not None:
                    self._fault("record")
                applied = await self._write(batch)
            except (psycopg.Error, OSError) as exc:
                self._give_back(batch)
                log.warning("recording %d outcomes failed (%s); retrying", len(batch), exc)
                await asyncio.sleep(delay.next())
                continue
            except BaseException:
                # Whatever else failed (keep_running restarts this loop), the batch
                # must not be lost: it is kept for the next attempt.
                self._give_back(batch)
                raise
            delay.reset()
            await self._written(batch, applied)

    def params(self, batch: list[Outcome]) -> dict[str, Any]:
        """Parameters of finish_runs."""
        route: Route = "sql" if self._events is None else self._events.route()
        if isinstance(batch, Batch):
            batch.events = route
        return {
            "notify_events": route == "sql",
            "now": self._clock.sql_now(),
            "worker": self._worker_id,
            "outcomes": encode_outcomes(batch),
        }

    def _account(self, batch: list[Outcome], applied: set[RunToken]) -> None:
        self.recorded += len(applied)
        if len(applied) == len(batch):
            return
        for outcome in batch:
            if (outcome.job_id, outcome.attempt) not in applied:
                self.stale += 1
                log.warning(
                    "stale run discarded id=%s attempt=%d outcome=%s (the job was rescued, "
                    "cancelled or finished elsewhere)",
                    outcome.job_id,
                    outcome.attempt,
                    outcome.kind,
                )

    async def wait_flushed(self) -> None:
        """Return once everything added so far has been written (tests, drain)."""
        async with self._flushed:
            await self._flushed.wait_for(lambda: not self._buffer and not self._writing)


def encode_outcomes(batch: list[Outcome]) -> str:
    """The `outcomes` parameter of the finish statements: a JSON array with one
    [id, attempt, kind, result, duration_ms, message, stack, failure_kind, delay_ms,
    progress] array per outcome, progress being [percent, message] or null, and an
    eleventh item, [[seq, unix time, level, text], ...], when the run logged lines.
    `result_json` is JSON already and goes in as it is."""
    return "[" + ",".join(map(_encode_outcome, batch)) + "]"


def _encode_outcome(o: Outcome) -> str:
    return (
        f'["{o.job_id}",{o.attempt},"{o.kind}",{o.result_json or "null"},'
        f"{_json_int(o.duration_ms)},{_json_text(o.message)},{_json_text(o.stack)},"
        f"{_json_text(o.failure_kind)},{int(o.delay_ms)},{_json_progress(o.progress)}"
        f"{_json_logs(o.logs)}]"
    )


def _json_progress(progress: tuple[int, str | None] | None) -> str:
    if progress is None:
        return "null"
    percent, message = progress
    return f"[{int(percent)},{_json_text(None if message is None else str(message))}]"


def _json_logs(lines: list[LogLine] | None) -> str:
    if not lines:
        return ""
    encoded = (
        f"[{seq},{at!r},{json.dumps(level)},{_json_text(text)}]" for seq, at, level, text in lines
    )
    return ",[" + ",".join(encoded) + "]"


def _json_int(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def _json_text(value: str | None) -> str:
    return "null" if value is None else json.dumps(_storable_text(value))


def _storable_text(text: str) -> str:
    """`text` as PostgreSQL can store it: text and jsonb hold neither NUL characters nor
    lone surrogates (an exception message may carry either), so each becomes U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _by_id(outcome: Outcome) -> UUID:
    return outcome.job_id


def _job_events(batch: list[Outcome], applied: set[RunToken]) -> list[JobEvent]:
    out = []
    for o in batch:
        names = _EVENTS.get(o.kind)
        if names is None or (o.job_id, o.attempt) not in applied:
            continue
        event, status = names
        if not status:
            status = "delayed" if o.delay_ms > 0 else "pending"
        out.append(JobEvent(event, o.job_id, o.queue, o.type, status))
    return out
