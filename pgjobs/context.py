"""What a handler sees of its job: `JobContext`, and the handler table's entry types.

Everything here sits below the App facade and the engine: the engine builds a
`JobContext` for each run, handlers (the built-in types included) receive one, and
neither needs to import `App` for it. `ctx.app` is the App running the job; its type,
`JobHost`, names the part of the App a handler uses.
"""

from __future__ import annotations

import logging
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
    logger: logging.Logger
    _control: RunControl = field(repr=False)
    # A plain flag, not a threading.Event: it is only ever set once and read, and a
    # run that builds no lock costs measurably less.
    _cancelled: bool = field(default=False, repr=False)
    completed_in_transaction: bool = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def mark_cancelled(self) -> None:
        self._cancelled = True

    async def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress (0-100). Writes are throttled and fenced to this run."""
        await self._control.write_progress(_clamp(percent), message)

    def progress_sync(self, percent: float, message: str | None = None) -> None:
        """`progress` for plain `def` handlers running in a thread."""
        self._control.write_progress_threadsafe(_clamp(percent), message)

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


def _clamp(percent: float) -> int:
    return max(0, min(100, round(percent)))
