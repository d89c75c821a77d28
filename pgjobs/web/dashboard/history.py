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


class History:
    """Finished jobs per minute up to `now` (minutes without jobs are absent).

    Minutes are indexed once by their number since the epoch, so each chart and total
    is one pass of integer arithmetic, per queue or over all queues."""

    def __init__(self, now: datetime, minutes: dict[datetime, Counts]) -> None:
        self.now = now
        self._now_minute = _epoch_minute(now)
        self._all: dict[int, list[int]] = {}
        self._by_queue: dict[str, list[tuple[int, int, int]]] = {}
        for minute, counts in minutes.items():
            m = _epoch_minute(minute)
            total = self._all.setdefault(m, [0, 0])
            for name, (completed, failed) in counts.items():
                total[0] += completed
                total[1] += failed
                self._by_queue.setdefault(name, []).append((m, completed, failed))

    def _rows(self, queue: str | None) -> list[tuple[int, int, int]]:
        if queue is None:
            return [(m, c, f) for m, (c, f) in self._all.items()]
        return self._by_queue.get(queue, [])

    def buckets(self, count: int, width_minutes: int, queue: str | None = None) -> list[Bucket]:
        """`count` buckets of `width_minutes`, aligned to the clock (UTC), the last one
        holding the current minute."""
        last = self._now_minute - self._now_minute % width_minutes
        first = last - width_minutes * (count - 1)
        totals = [[0, 0] for _ in range(count)]
        for m, completed, failed in self._rows(queue):
            if first <= m <= self._now_minute:
                slot = totals[(m - first) // width_minutes]
                slot[0] += completed
                slot[1] += failed
        return [
            Bucket(_from_epoch_minute(first + i * width_minutes), c, f)
            for i, (c, f) in enumerate(totals)
        ]

    def totals(self, minutes: int, queue: str | None = None) -> tuple[int, int]:
        """(completed, failed) over the last `minutes` minutes, the current one included."""
        first = self._now_minute - (minutes - 1)
        completed = failed = 0
        for m, c, f in self._rows(queue):
            if first <= m <= self._now_minute:
                completed += c
                failed += f
        return completed, failed


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
            closed_until = _floor_minute(now - GRACE)
            live: dict[datetime, Counts] = {}
            for row in series.minutes:
                minute = row.minute.astimezone(UTC)
                target = self._closed if minute < closed_until else live
                target.setdefault(minute, {})[row.queue] = (row.completed, row.failed)
            window_start = _floor_minute(now) - MINUTE * (WINDOW_MINUTES - 1)
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


def _epoch_minute(at: datetime) -> int:
    return int(at.timestamp()) // 60


def _from_epoch_minute(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, UTC)


def _floor_minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _log_failure(task: asyncio.Task[History]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("dashboard history could not be read: %s", exc)
