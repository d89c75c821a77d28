"""Throughput history for the overview's charts: finished jobs per queue and minute.

Counting a day of finished jobs means reading every one of them (a million rows on a
busy system), far too slow for a page that refreshes every few seconds. A minute that
is over does not change any more, so each server process counts it once and keeps it:
a refresh reads only the minutes since the last one (plus a grace period for commits
still in flight). The first fill reads the whole window; it starts in the background
when the server starts and pages render without charts until it is done.

Kept minutes are history: jobs pruned or retried later still count where they
finished, as a throughput chart should show them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pgjobs.ops import Ops
from pgjobs.web.dashboard.charts import Bucket

log = logging.getLogger("pgjobs.web.dashboard")

# A minute is kept once it ended this long ago: completions are stamped by the database
# clock when their transaction writes them, and commit a moment later.
GRACE = timedelta(minutes=2)
# The 24-hour chart has 30-minute buckets aligned to the clock, so its first bucket may
# start up to 29 minutes before "24 hours ago".
WINDOW_MINUTES = 24 * 60 + 30
MINUTE = timedelta(minutes=1)

Counts = dict[str, tuple[int, int]]  # queue -> (completed, failed)


@dataclass(frozen=True, slots=True)
class History:
    """Finished jobs per minute up to `now` (minutes without jobs are absent)."""

    now: datetime
    minutes: dict[datetime, Counts]

    def buckets(self, count: int, width_minutes: int, queue: str | None = None) -> list[Bucket]:
        """`count` buckets of `width_minutes`, aligned to the clock, the last one holding
        the current minute."""
        width = timedelta(minutes=width_minutes)
        last = _floor(self.now, width_minutes)
        starts = [last - width * (count - 1 - i) for i in range(count)]
        totals = {start: [0, 0] for start in starts}
        first = starts[0]
        for minute, counts in self.minutes.items():
            if minute < first:
                continue
            slot = totals.get(_floor(minute, width_minutes))
            if slot is None:
                continue
            for name, (completed, failed) in counts.items():
                if queue is None or name == queue:
                    slot[0] += completed
                    slot[1] += failed
        return [Bucket(start, totals[start][0], totals[start][1]) for start in starts]

    def totals(self, minutes: int, queue: str | None = None) -> tuple[int, int]:
        """(completed, failed) over the last `minutes` minutes, the current one included."""
        first = _floor(self.now, 1) - MINUTE * (minutes - 1)
        completed = failed = 0
        for counts in self._since(first):
            for name, (c, f) in counts.items():
                if queue is None or name == queue:
                    completed += c
                    failed += f
        return completed, failed

    def _since(self, first: datetime) -> Iterator[Counts]:
        return (c for m, c in self.minutes.items() if m >= first)


class HistoryCache:
    """One per server process; safe for concurrent requests on one event loop."""

    def __init__(self) -> None:
        self._closed: dict[datetime, Counts] = {}
        self._closed_until: datetime | None = None
        self._lock = asyncio.Lock()
        self._fill: asyncio.Task[History] | None = None

    @property
    def ready(self) -> bool:
        return self._closed_until is not None

    def warm_up(self, ops: Ops) -> None:
        """Start the first (slow) fill in the background unless it runs or ran."""
        if self.ready or (self._fill is not None and not self._fill.done()):
            return
        self._fill = asyncio.create_task(self.refresh(ops), name="pgjobs-dashboard-history")
        self._fill.add_done_callback(_log_failure)

    async def get(self, ops: Ops, wait_s: float) -> History | None:
        """The history up to now, or None while the first fill is still running after
        `wait_s` seconds (it keeps running)."""
        if self.ready:
            return await self.refresh(ops)
        self.warm_up(ops)
        assert self._fill is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._fill), wait_s)
        except TimeoutError:
            return None

    async def refresh(self, ops: Ops) -> History:
        async with self._lock:
            series = await ops.finished_minutes(
                since=self._closed_until, window_minutes=WINDOW_MINUTES
            )
            now = series.now.astimezone(UTC)
            closed_until = _floor(now - GRACE, 1)
            live: dict[datetime, Counts] = {}
            for row in series.minutes:
                minute = row.minute.astimezone(UTC)
                target = self._closed if minute < closed_until else live
                target.setdefault(minute, {})[row.queue] = (row.completed, row.failed)
            window_start = _floor(now, 1) - MINUTE * (WINDOW_MINUTES - 1)
            for minute in [m for m in self._closed if m < window_start]:
                del self._closed[minute]
            if self._closed_until is None or closed_until > self._closed_until:
                self._closed_until = closed_until
            return History(now=now, minutes={**self._closed, **live})

    async def close(self) -> None:
        if self._fill is not None and not self._fill.done():
            self._fill.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._fill


def _floor(at: datetime, minutes: int) -> datetime:
    base = at.replace(second=0, microsecond=0)
    if minutes <= 1:
        return base
    since_midnight = base.hour * 60 + base.minute
    return base - timedelta(minutes=since_midnight % minutes)


def _log_failure(task: asyncio.Task[History]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("dashboard history could not be read: %s", exc)
