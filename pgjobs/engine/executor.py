"""Running one claimed job: call its handler under a timeout and classify the outcome."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import traceback
import types
from collections.abc import Callable, Coroutine, Generator
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
        # The event loop's clock, which asyncio.timeout_at reads too.
        self._started = asyncio.get_running_loop().time()
        self._deadline: asyncio.Timeout | None = None
        self._context: contextvars.Context | None = None
        # The handler's coroutine and what it waits on, after start() ran its first step.
        self._suspended: tuple[Coroutine[Any, Any, Any], Any] | None = None

    @property
    def elapsed_ms(self) -> int:
        return round((asyncio.get_running_loop().time() - self._started) * 1000)

    def start(self) -> Outcome | None:
        """Run an async handler up to its first wait, here and now: one that never waits
        (most quick handlers) ends here, without the task and the timer that `run`
        costs. None when there is more to run (or the handler is a plain `def`): `run`
        then runs it, going on from where this stopped."""
        spec, job = self.spec, self.job
        if spec is None:
            return self._ended_by(NoHandler(f"no handler registered for job type {job.type!r}"))
        if not spec.is_async:
            return None
        self._context = contextvars.copy_context()
        try:
            coro = spec.func(self.ctx, job.payload)
            yielded = self._context.run(coro.send, None)
        except StopIteration as stop:
            return self._completed(stop.value)
        except BaseException as exc:  # classified as run() does
            return self._ended_by(exc)
        self._suspended = (coro, yielded)
        return None

    @property
    def context(self) -> contextvars.Context | None:
        """The context the handler started in (see `start`): its task goes on in it."""
        return self._context

    async def run(self) -> Outcome:
        try:
            result = await self._call()
        except BaseException as exc:  # see _ended_by
            return self._ended_by(exc)
        return self._completed(result)

    def _ended_by(self, exc: BaseException) -> Outcome:
        """The outcome of a run the handler ended by raising `exc`. A cancellation that
        is neither a shutdown nor an operator's cancel is raised again."""
        job = self.job
        if isinstance(exc, TimeoutError):
            if self._deadline is None or not self._deadline.expired():
                return self._failure(exc)  # the handler's own timeout, not the job's
            self.ctx.mark_cancelled()
            if self.spec is not None and not self.spec.is_async:
                self.threads.abandoned()
            timeout = TimeoutError(f"job exceeded {job.timeout_ms} ms")
            timeout.__cause__ = exc
            return self._failure(timeout, kind="timeout")
        if isinstance(exc, asyncio.CancelledError):
            self.ctx.mark_cancelled()
            if self.spec is not None and not self.spec.is_async:
                self.threads.abandoned()
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
        # The job's timeout counts from the start, including a first step run by start().
        deadline = self._started + job.timeout_ms / 1000
        async with asyncio.timeout_at(deadline) as self._deadline:
            if self._suspended is not None:
                coro, yielded = self._suspended
                self._suspended = None
                return await _resume(coro, yielded)
            if spec.is_async:
                return await spec.func(ctx, job.payload)
            return await self.threads.run(_bind(spec.func, ctx, job.payload))

    def _failure(self, exc: BaseException, *, kind: str = "error", final: bool = False) -> Outcome:
        job = self.job
        last = final or job.attempts >= job.max_attempts
        delay = 0
        if not last:
            delay = retry_delay_ms(
                job.backoff,
                job.attempts,
                default_delay_ms=self.settings.retry_delay_ms,
                cap_ms=self.settings.backoff_max_ms,
            )
        return Outcome(
            job.id,
            job.attempts,
            "failed" if last else "retry",
            message=describe(exc),
            stack=stack_of(exc),
            failure_kind=kind,
            delay_ms=delay,
        )


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Go on with `coro`, which already ran up to its first wait and yielded `yielded`
    (see Execution.start), exactly as if the awaiting task had run it from the start:
    what the task sends or throws in goes to `coro`, what `coro` yields goes out."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # handed to the handler
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


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
