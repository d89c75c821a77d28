"""Retry delays: exponential, fixed or an explicit list, with jitter and a cap."""

from __future__ import annotations

import random
from typing import Any

JITTER = 0.10


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


class ReconnectDelay:
    """Growing pause between attempts to reach a service that is down."""

    def __init__(self, first: float = 0.1, maximum: float = 5.0) -> None:
        self.first = first
        self.maximum = maximum
        self.current = first

    def next(self) -> float:
        delay = self.current
        self.current = min(self.maximum, self.current * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.current = self.first
