"""What a handler sees of its job: `JobContext`, and the handler table's entry types.

Everything here sits below the App facade and the engine: the engine builds a
`JobContext` for each run, handlers (the built-in types included) receive one, and
neither needs to import `App` for it. `ctx.app` is the App running the job; its type,
`JobHost`, names the part of the App a handler uses.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import psycopg

from pgjobs.backoff import CustomBackoff
from pgjobs.clock import Clock
from pgjobs.config import Settings
from pgjobs.models import Job

Handler = Callable[["JobContext", Any], Any]

# What is kept of the lines a run logs through ctx.logger (stored in job_logs with the
# run's outcome): the first LOG_FIRST_LINES and the last LOG_LAST_LINES of each attempt,
# each cut at LOG_LINE_CHARS. A run that logs a million lines holds no more than these.
LOG_FIRST_LINES = 100
LOG_LAST_LINES = 50
LOG_LINE_CHARS = 2000
LogLine = tuple[int, float, str, str]  # (line number in the attempt, unix time, level, text)


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    type: str
    func: Handler
    is_async: bool
    backoff: CustomBackoff | None = None  # the handler's own retry delays


class HandlerRegistry(Protocol):
    """Where handlers are registered (the App)."""

    def register(self, type: str, func: Handler) -> None: ...


class JobHost(Protocol):
    """The App as a handler reaches it through `ctx.app`: its settings and clock and its
    producer API (create, read, cancel, retry, wait). Declared here, below the facade,
    so that neither the engine nor the handlers import `App`."""

    @property
    def settings(self) -> Settings: ...

    @property
    def clock(self) -> Clock: ...

    async def create(
        self,
        type: str,
        payload: Any = None,
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        **options: Any,
    ) -> Job: ...

    async def create_many(
        self, jobs: Iterable[Any], *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> list[UUID]: ...

    async def flow(
        self, jobs: Iterable[Any], *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> Any: ...

    async def get(self, job_id: UUID | str) -> Job: ...

    async def cancel(self, job_id: UUID | str) -> Job: ...

    async def retry(self, job_id: UUID | str) -> Job: ...

    async def wait(self, job_id: UUID | str, timeout: float | None = None) -> Any: ...

    def create_sync(
        self,
        type: str,
        payload: Any = None,
        *,
        conn: psycopg.Connection[Any] | None = None,
        **options: Any,
    ) -> Job: ...

    def get_sync(self, job_id: UUID | str) -> Job: ...

    def connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...


class RunControl(Protocol):
    """The worker side of one run, as the context needs it."""

    async def write_progress(self, percent: int, message: str | None) -> None: ...

    def write_progress_threadsafe(self, percent: int, message: str | None) -> None: ...

    async def complete_in(self, conn: psycopg.AsyncConnection[Any], result: Any) -> None: ...

    async def parent_results(self) -> dict[str, Any]: ...


@dataclass(eq=False)
class JobContext:
    """One run of one job.

    `attempt` counts from 1. `cancelled` turns true when the job was cancelled or the
    run was abandoned (timeout, shutdown): cooperative sync handlers should check it.
    """

    id: UUID
    type: str
    queue: str
    attempt: int
    max_attempts: int
    payload: Any
    priority: int
    timeout_ms: int
    created_at: datetime
    worker_id: UUID
    app: JobHost
    _type_logger: logging.Logger = field(repr=False)
    _control: RunControl = field(repr=False)
    _run_log: RunLog | None = field(default=None, repr=False)
    _run_logger: logging.Logger | None = field(default=None, repr=False)
    # A plain flag, not a threading.Event: it is only ever set once and read, and a
    # run that builds no lock costs measurably less.
    _cancelled: bool = field(default=False, repr=False)
    completed_in_transaction: bool = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def logger(self) -> logging.Logger:
        """This run's logger: a child of the job type's logger `pgjobs.job.<type>`, so its
        lines reach the process log as before, and they are also kept with the job
        (job_logs). Made on first use: a run that never logs costs nothing."""
        if self._run_logger is None:
            self._run_log = RunLog()
            logger = logging.Logger(self._type_logger.name)
            logger.parent = self._type_logger
            logger.addHandler(self._run_log)
            self._run_logger = logger
        return self._run_logger

    def log_lines(self) -> list[LogLine] | None:
        """The lines kept of this run so far (None when it logged nothing)."""
        return self._run_log.lines() if self._run_log is not None else None

    def mark_cancelled(self) -> None:
        self._cancelled = True

    async def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress (0-100). Writes are throttled and fenced to this run."""
        await self._control.write_progress(_clamp(percent), _progress_text(message))

    def progress_sync(self, percent: float, message: str | None = None) -> None:
        """`progress` for plain `def` handlers running in a thread."""
        self._control.write_progress_threadsafe(_clamp(percent), _progress_text(message))

    async def complete_in(self, conn: psycopg.AsyncConnection[Any], result: Any = None) -> None:
        """Complete this job inside `conn`'s open transaction.

        The handler's own writes and the job's completion then commit (or roll back)
        together. Raises `StaleRun` if this run no longer owns the job, so the caller's
        transaction rolls back instead of committing effects twice.
        """
        await self._control.complete_in(conn, result)
        self.completed_in_transaction = True

    async def parent_results(self) -> dict[str, Any]:
        """Results of the jobs this one depends on, by job id."""
        return await self._control.parent_results()


def _progress_text(message: Any) -> str | None:
    """The message as text: handlers ported from BullMQ pass objects (`{"step": 2}`)
    where pgjobs stores a line of text; JSON keeps them readable."""
    if message is None or isinstance(message, str):
        return message
    try:
        return json.dumps(message, default=str)
    except (TypeError, ValueError, RecursionError):
        return str(message)


class RunLog(logging.Handler):
    """Keeps the first and the last lines one run logs, and counts them all; the
    numbers of the lines kept show how many were dropped between them. Records arrive
    at the logger's level (LOG_LEVEL for `pgjobs worker`), from the event loop or from a
    sync handler's thread."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._first: list[LogLine] = []
        self._last: deque[LogLine] = deque(maxlen=LOG_LAST_LINES)

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        try:
            text = record.getMessage()
            if record.exc_info:
                text = f"{text}\n{_FORMATTER.formatException(record.exc_info)}"
        except Exception:  # a bad format string in the handler's call, as logging reports it
            self.handleError(record)
            return
        line = (self.count, record.created, record.levelname, text[:LOG_LINE_CHARS])
        if self.count <= LOG_FIRST_LINES:
            self._first.append(line)
        else:
            self._last.append(line)

    def lines(self) -> list[LogLine] | None:
        kept = [*self._first, *list(self._last)]
        return kept or None


_FORMATTER = logging.Formatter()


def _clamp(percent: float) -> int:
    return max(0, min(100, round(percent)))
