"""The one source of "now" on the Python side.

Statements that depend on time take a `now` parameter; `SystemClock` passes None so
PostgreSQL's own clock (`pgjobs_now()`) decides, and tests pass a `FrozenClock` they
move by hand, so cron, backoff and delays are tested without sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clock:
    """Real time: the database's clock is authoritative."""

    def sql_now(self) -> datetime | None:
        """The value to pass as a statement's `now` (None = the database's clock)."""
        return None

    def now(self) -> datetime:
        """Best local estimate of now, for computing sleeps."""
        return datetime.now(UTC)

    @property
    def frozen(self) -> bool:
        return False


SystemClock = Clock


class FrozenClock(Clock):
    """A clock that only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        if self._now.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware datetime")

    def sql_now(self) -> datetime | None:
        return self._now

    def now(self) -> datetime:
        return self._now

    @property
    def frozen(self) -> bool:
        return True

    def advance(self, delta: timedelta | float) -> datetime:
        self._now += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when
