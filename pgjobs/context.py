"""What a handler sees of its job: `JobContext`."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

if TYPE_CHECKING:
    import psycopg

    from pgjobs.app import App


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
    app: App
    logger: logging.Logger
    _control: RunControl = field(repr=False)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    completed_in_transaction: bool = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def mark_cancelled(self) -> None:
        self._cancelled.set()

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
