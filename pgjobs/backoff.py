"""Retry delays: exponential, fixed or an explicit list, with jitter and a cap."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import numbers
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

JITTER = 0.10

log = logging.getLogger("pgjobs.backoff")

# `backoff=` of a handler: (attempt that failed, from 1; what it raised) -> seconds,
# a timedelta, or None for the job's own backoff.
BackoffFunc = Callable[[int, BaseException], "float | timedelta | None"]


def retry_delay_ms(
    backoff: dict[str, Any] | None,
    attempt: int,
    *,
    default_delay_ms: int,
    cap_ms: int,
    rng: random.Random | None = None,
) -> int:
    """Delay before the retry that follows failed attempt number `attempt` (from 1).

    exponential: delay * 2^(attempt-1); fixed: delay; list: the attempt's entry (the last
    one repeats). No backoff given means exponential from JOBS_RETRY_DELAY. The result
    gets +/-10 % jitter, so jobs that failed together do not retry together, and is
    capped at `cap_ms` (JOBS_BACKOFF_MAX).
    """
    kind = (backoff or {}).get("type", "exponential")
    if kind == "list":
        delays: list[int] = backoff["delays"] if backoff else []
        base = delays[min(attempt, len(delays)) - 1] if delays else default_delay_ms
    else:
        delay = int((backoff or {}).get("delay", default_delay_ms))
        base = delay if kind == "fixed" else delay * 2 ** min(max(attempt - 1, 0), 62)
    base = min(base, cap_ms)
    jitter = (rng or random).uniform(-JITTER, JITTER)
    return max(0, min(cap_ms, round(base * (1 + jitter))))


class CustomBackoff:
    """A handler's own retry delays: `func(attempt, error)` for each retry of its type.

    The function runs on the worker's event loop, so it must be quick. Whatever it does
    wrong (raises, returns a negative, non-finite or non-number value, or more than
    `limit_ms`) falls back to the job's own backoff: one bad function must neither fail
    jobs for a reason of its own nor stop the worker. That is logged once per type, not
    on every retry, which a failing handler could repeat thousands of times.
    """

    __slots__ = ("_warned", "func", "type")

    def __init__(self, handler_type: str, func: BackoffFunc) -> None:
        if not callable(func) or inspect.iscoroutinefunction(func):
            raise TypeError(
                f"backoff of handler {handler_type!r} must be a plain function "
                "(attempt, error) -> seconds | timedelta | None"
            )
        self.type = handler_type
        self.func = func
        self._warned = False

    def delay_ms(self, attempt: int, error: BaseException, *, limit_ms: int) -> int | None:
        """The delay in ms before the retry after failed attempt `attempt`, or None for
        the job's own backoff. No jitter: the function decides exactly."""
        try:
            value = self.func(attempt, error)
        except Exception as exc:
            self._warn(f"raised {short_error(exc)}")
            return None
        if value is None:
            return None
        ms = _to_ms(value)
        if ms is None or ms > limit_ms:
            self._warn(
                f"returned {_shown(value)}, not a number of seconds from 0 to {limit_ms // 1000}"
            )
            return None
        return ms

    def _warn(self, problem: str) -> None:
        if self._warned:
            return
        self._warned = True
        log.error(
            "backoff of job type %r %s; its jobs use their own backoff instead "
            "(logged once per process)",
            self.type,
            problem,
        )


def _to_ms(value: object) -> int | None:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, numbers.Real | Decimal) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except (OverflowError, ValueError):
            return None
    else:
        return None
    ms = seconds * 1000
    if not math.isfinite(ms) or ms < 0:
        return None
    return round(ms)


def _shown(value: object, limit: int = 100) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real problem
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "…"


class ReconnectDelay:
    """Growing pause between attempts to reach a service that is down."""

    def __init__(self, first: float = 0.1, maximum: float = 5.0) -> None:
        self.first = first
        self.maximum = maximum
        self.current = first
        self.attempts = 0  # failures since the last success

    def next(self) -> float:
        self.attempts += 1
        delay = self.current
        self.current = min(self.maximum, self.current * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.current = self.first
        self.attempts = 0


# A loop that ran this long before failing is restarted after the shortest pause again.
HEALTHY_RUN_S = 60.0


async def keep_running(
    name: str,
    loop: Callable[[], Awaitable[None]],
    logger: logging.Logger,
    *,
    stopping: asyncio.Event | None = None,
) -> None:
    """Run `loop` until it returns; restart it after a growing pause whenever it raises.

    For a process's background loops: a loop that died of an exception nobody expected
    would leave the process alive (heartbeating, holding a lease) but no longer doing
    that loop's work. The error is logged with a shortened traceback (a RecursionError's
    can run to hundreds of kilobytes). Once `stopping` is set, a failure ends the loop
    and a pause before a restart is cut short, so a stop never waits out the backoff."""
    delay = ReconnectDelay(first=0.5, maximum=10.0)
    while True:
        started = time.monotonic()
        try:
            await loop()
            return
        except Exception as exc:
            if stopping is not None and stopping.is_set():
                return
            if time.monotonic() - started > HEALTHY_RUN_S:
                delay.reset()
            pause = delay.next()
            logger.error(
                "%s failed (%s); restarting it in %.1f s\n%s",
                name,
                short_error(exc),
                pause,
                short_traceback(exc),
            )
            if stopping is None:
                await asyncio.sleep(pause)
            elif await _wait_for(stopping, pause):
                return


async def _wait_for(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to `timeout` s for `event`; whether it was set."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


def short_error(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def short_traceback(exc: BaseException, limit: int = 4000) -> str:
    """The end of `exc`'s traceback (where it was raised), at most `limit` characters."""
    text = "".join(traceback.format_exception(exc))
    return text if len(text) <= limit else "…" + text[-limit:]
