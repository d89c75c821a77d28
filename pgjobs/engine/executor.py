"""Running one claimed job: call its handler under a timeout and classify the outcome."""

from __future__ import annotations

import asyncio
import json
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pgjobs.backoff import retry_delay_ms
from pgjobs.config import Settings
from pgjobs.context import HandlerSpec, JobContext
from pgjobs.engine.completer import Outcome
from pgjobs.errors import Discard, RetryIn
from pgjobs.producer.options import unstorable_json
from pgjobs.validation import MAX_DELAY_MS

MAX_MESSAGE = 4000
MAX_STACK = 64_000


@dataclass(slots=True)
class ClaimedJob:
    id: UUID
    type: str
    queue: str
    payload: Any
    priority: int
    attempts: int
    max_attempts: int
    timeout_ms: int
    backoff: dict[str, Any] | None
    created_at: datetime
    depends_on: list[UUID] | None
    cancel_requested_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ClaimedJob:
        return cls(**{name: row[name] for name in cls.__slots__})


class NoHandler(Exception):
    """The worker has no handler for the job's type (another worker may)."""


class Abandoned(Exception):
    """The run was given up (cancelled by an operator or by shutdown)."""


class ThreadRunner:
    """Runs plain `def` handlers in threads.

    A thread cannot be killed: a timed-out sync handler is abandoned and keeps its thread
    until it returns by itself. When too many threads are stuck like that, the pool is
    replaced, so new jobs never wait behind them.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._pool = self._new_pool()
        self._abandoned = 0

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self._size, thread_name_prefix="pgjobs-handler")

    async def run(self, func: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, func)

    def abandoned(self) -> None:
        self._abandoned += 1
        if self._abandoned >= max(1, self._size // 2):
            self._pool.shutdown(wait=False)
            self._pool = self._new_pool()
            self._abandoned = 0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_MESSAGE]


def stack_of(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))[-MAX_STACK:]


class Execution:
    """One run: calls the handler and turns whatever happens into an Outcome."""

    def __init__(
        self,
        job: ClaimedJob,
        spec: HandlerSpec | None,
        ctx: JobContext,
        settings: Settings,
        threads: ThreadRunner,
    ) -> None:
        self.job = job
        self.spec = spec
        self.ctx = ctx
        self.settings = settings
        self.threads = threads
        self.cancel_requested = False  # by an operator
        self.released = False  # by shutdown
        self.timed_out = False  # by the job's timeout
        # The event loop's clock, which the timeout's timer runs on.
        self._started = asyncio.get_running_loop().time()

    @property
    def elapsed_ms(self) -> int:
        return round((asyncio.get_running_loop().time() - self._started) * 1000)

    async def run(self) -> Outcome:
        """Run the handler in the current task, under the job's timeout: one timer that
        cancels the task (asyncio.timeout costs twice as much per run, which shows with
        quick handlers). The handler sees the expiry as a cancellation, as it would
        under asyncio.timeout; the outcome is a timeout failure."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        timer = loop.call_at(self._started + self.job.timeout_ms / 1000, self._expire, task)
        try:
            result = await self._call()
        except BaseException as exc:  # see _ended_by
            return self._ended_by(exc)
        finally:
            timer.cancel()
        return self._completed(result)

    def _expire(self, task: asyncio.Task[Any]) -> None:
        self.timed_out = True
        task.cancel()

    def _ended_by(self, exc: BaseException) -> Outcome:
        """The outcome of a run the handler ended by raising `exc`. A cancellation that
        is neither a shutdown nor an operator's cancel is raised again."""
        job = self.job
        if isinstance(exc, asyncio.CancelledError):
            self.ctx.mark_cancelled()
            if self.spec is not None and not self.spec.is_async:
                self.threads.abandoned()
            if self.timed_out and not self.released and not self.cancel_requested:
                timeout = TimeoutError(f"job exceeded {job.timeout_ms} ms")
                timeout.__cause__ = exc
                return self._failure(timeout, kind="timeout")
            if self.released:
                return Outcome(job.id, job.attempts, "release")
            if self.cancel_requested:
                return Outcome(job.id, job.attempts, "cancelled", message="cancelled")
            raise exc
        if isinstance(exc, Discard):
            return self._failure(exc, kind="discarded", final=True)
        if isinstance(exc, RetryIn):
            return Outcome(
                job.id,
                job.attempts,
                "snooze",
                delay_ms=round(exc.seconds * 1000),
                message=exc.reason or None,
            )
        if isinstance(exc, Exception):
            return self._failure(exc, kind="no_handler" if isinstance(exc, NoHandler) else "error")
        raise exc  # KeyboardInterrupt, SystemExit: not the job's outcome

    def _completed(self, result: Any) -> Outcome:
        job = self.job
        if self.ctx.completed_in_transaction:
            # Already recorded by the handler's own transaction; nothing left to write.
            return Outcome(job.id, job.attempts, "completed", duration_ms=self.elapsed_ms)
        if result is None:
            encoded = "null"  # most handlers return nothing: no encoder, no checks
        else:
            try:
                encoded = json.dumps(result, ensure_ascii=False, allow_nan=False, default=_default)
            except (TypeError, ValueError) as exc:
                return self._failure(TypeError(f"result is not JSON-serializable: {exc}"))
            problem = unstorable_json(encoded)
            if problem is not None:
                return self._failure(ValueError(f"result contains {problem}"))
        return Outcome(
            job.id, job.attempts, "completed", result_json=encoded, duration_ms=self.elapsed_ms
        )

    async def _call(self) -> Any:
        spec, job, ctx = self.spec, self.job, self.ctx
        if spec is None:
            raise NoHandler(f"no handler registered for job type {job.type!r}")
        if spec.is_async:
            return await spec.func(ctx, job.payload)
        return await self.threads.run(_bind(spec.func, ctx, job.payload))

    def _failure(self, exc: BaseException, *, kind: str = "error", final: bool = False) -> Outcome:
        job = self.job
        last = final or job.attempts >= job.max_attempts
        delay = 0
        if not last:
            delay = self._retry_delay_ms(exc)
        return Outcome(
            job.id,
            job.attempts,
            "failed" if last else "retry",
            message=describe(exc),
            stack=stack_of(exc),
            failure_kind=kind,
            delay_ms=delay,
        )

    def _retry_delay_ms(self, exc: BaseException) -> int:
        job, settings = self.job, self.settings
        custom = self.spec.backoff if self.spec is not None else None
        if custom is not None:
            chosen = custom.delay_ms(job.attempts, exc, limit_ms=MAX_DELAY_MS)
            if chosen is not None:
                return min(chosen, settings.backoff_max_ms)
        return retry_delay_ms(
            job.backoff,
            job.attempts,
            default_delay_ms=settings.retry_delay_ms,
            cap_ms=settings.backoff_max_ms,
        )


def _bind(
    func: Callable[[JobContext, Any], Any], ctx: JobContext, payload: Any
) -> Callable[[], Any]:
    def call() -> Any:
        threading.current_thread().name = f"pgjobs-handler:{ctx.type}"
        return func(ctx, payload)

    return call


def _default(value: Any) -> Any:
    if isinstance(value, UUID | datetime):
        return str(value) if isinstance(value, UUID) else value.isoformat()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
