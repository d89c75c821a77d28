"""Charts drawn on the server: geometry for inline SVG.

A chart here is numbers (coordinates, sizes) plus plain text (tick labels, tooltips);
the macros in `dashboard/_macros.html` turn it into `<svg>` elements with autoescaping
on, so no markup is ever built from strings and no script or style is needed to draw
it. Every mark carries an SVG `<title>`, which browsers show as a tooltip on hover.

Times are UTC (the history's buckets are aligned to the UTC clock) and the time axis
says so. The failure rate is only drawn for buckets with enough finished jobs to mean
something (`MIN_RATE_JOBS`): one failure out of two jobs is not a 50 % failure rate,
and a line through such buckets is noise. Buckets below that are gaps in the line,
still with a tooltip giving their counts; the failures themselves are always visible
as counts in the throughput chart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pgjobs.web.dashboard.format import number, percent

# Fewer finished jobs than this in a bucket: no failure rate is drawn for it.
MIN_RATE_JOBS = 5
# Candidate spacings of the time axis's ticks, in minutes (the first that gives at
# most MAX_TIME_TICKS ticks is used).
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440)
MAX_TIME_TICKS = 7
MAX_VALUE_TICKS = 5
# Room around the plot area for the tick labels, in SVG units.
LEFT, RIGHT, TOP, BOTTOM = 44, 16, 8, 30
NO_DATA = "No data: no job finished in this window"


@dataclass(frozen=True, slots=True)
class Bucket:
    """Jobs that finished in [start, start + width)."""

    start: datetime
    completed: int
    failed: int

    @property
    def processed(self) -> int:
        return self.completed + self.failed

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.processed if self.processed else None


@dataclass(frozen=True, slots=True)
class Tick:
    """A tick on an axis: its position in SVG units and its label."""

    at: float
    label: str


@dataclass(frozen=True, slots=True)
class Frame:
    """The plot area and axes of a chart. The plot spans x in [left, right] and y in
    [top, bottom] (SVG y grows downwards)."""

    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    x_unit: str
    y_unit: str


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    ok_y: float
    ok_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(frozen=True, slots=True)
class BarChart:
    """Completed (bottom) and failed (stacked on top) jobs per bucket."""

    frame: Frame
    bars: tuple[Bar, ...]
    peak: int
    completed: int
    failed: int
    label: str
    small: bool = False

    @property
    def empty(self) -> bool:
        return self.completed + self.failed == 0

    @property
    def summary(self) -> str:
        return f"{self.label}: {number(self.completed)} completed, {number(self.failed)} failed"

    @property
    def note(self) -> str | None:
        """What the chart shows instead of bars when there are none."""
        if not self.empty:
            return None
        return "no jobs" if self.small else NO_DATA


@dataclass(frozen=True, slots=True)
class RatePoint:
    x: float
    y: float
    title: str


@dataclass(frozen=True, slots=True)
class Gap:
    """A bucket with too few jobs for a rate: a hover area with its counts."""

    x: float
    width: float
    title: str


@dataclass(frozen=True, slots=True)
class RateChart:
    """The share of finished jobs that failed, per bucket with enough jobs; a line
    joins neighbouring buckets only, so a gap shows where no rate is known."""

    frame: Frame
    lines: tuple[str, ...]  # polyline points, one per run of neighbouring buckets
    points: tuple[RatePoint, ...]
    gaps: tuple[Gap, ...]
    label: str
    processed: int
    min_jobs: int

    @property
    def empty(self) -> bool:
        return self.processed == 0

    @property
    def sparse(self) -> bool:
        """Jobs finished, but no bucket had enough of them for a rate."""
        return self.processed > 0 and not self.points

    @property
    def summary(self) -> str:
        return f"{self.label}: {len(self.points)} buckets with at least {self.min_jobs} jobs"

    @property
    def note(self) -> str | None:
        if self.empty:
            return NO_DATA
        if self.sparse:
            return f"Too few jobs for a rate: fewer than {self.min_jobs} in every bucket"
        return None


# ---------------------------------------------------------------- ticks


def count_label(value: float) -> str:
    """A count as a short axis label: 750, 1,500, 25k, 1.5M."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return number(int(value)) if float(value).is_integer() else f"{value:g}"


def count_ticks(peak: int, max_ticks: int = MAX_VALUE_TICKS) -> tuple[float, ...]:
    """Tick values from 0 to the first round value at or above `peak`, spaced by
    1, 2, 2.5 or 5 times a power of ten, whole numbers only (a count has no halves).
    An axis for nothing still spans 0..1, so it can be drawn."""
    peak = max(peak, 1)
    raw = peak / (max_ticks - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = 1.0
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * magnitude
        if step >= raw and float(step).is_integer():
            break
    step = max(step, 1.0)
    top = math.ceil(peak / step) * step
    count = round(top / step)
    return tuple(i * step for i in range(count + 1))


def rate_label(share: float) -> str:
    """A share as a short axis label: 0%, 0.5%, 25%."""
    return f"{round(share * 100, 3):g}%"


def rate_ticks(peak: float) -> tuple[float, ...]:
    """Shares from 0 to the first of 1 %, 2 %, 5 %, 10 %, 20 %, 50 %, 100 % at or
    above `peak`, in quarters or halves: low failure rates stay readable."""
    for top, parts in ((0.01, 2), (0.02, 2), (0.05, 5), (0.1, 2), (0.2, 4), (0.5, 5)):
        if peak <= top:
            return tuple(top * i / parts for i in range(parts + 1))
    return (0.0, 0.25, 0.5, 0.75, 1.0)


def time_ticks(
    start: datetime, width_minutes: int, count: int, left: float, slot: float
) -> tuple[Tick, ...]:
    """Ticks at round UTC times (every 10 minutes, every 4 hours, ...) within the
    buckets' span; a tick at midnight shows the date instead."""
    span = width_minutes * count
    step = next((s for s in TIME_STEPS if span / s <= MAX_TIME_TICKS), TIME_STEPS[-1])
    step = max(step, width_minutes)
    first = int(start.timestamp()) // 60
    ticks = []
    minute = -(-first // step) * step  # the first multiple of step at or after first
    while minute < first + span:
        at = start + timedelta(minutes=minute - first)
        x = left + (minute - first) / width_minutes * slot
        label = at.strftime("%b %d") if at.hour == at.minute == 0 else at.strftime("%H:%M")
        ticks.append(Tick(round(x, 2), label))
        minute += step
    return tuple(ticks)


def _span(bucket: Bucket, width_minutes: int) -> str:
    end = bucket.start + timedelta(minutes=width_minutes)
    return f"{bucket.start:%H:%M}-{end:%H:%M} UTC"


def _bucket_unit(width_minutes: int) -> str:
    return "jobs/min" if width_minutes == 1 else f"jobs per {width_minutes} min"


def _frame(
    buckets: Sequence[Bucket],
    width_minutes: int,
    width: int,
    height: int,
    y_values: Sequence[float],
    y_label: Callable[[float], str],
    y_unit: str,
    small: bool,
) -> tuple[Frame, float]:
    """The frame and the width of one bucket's slot."""
    left, right, top, bottom = (
        (0.0, width, 0.0, height)
        if small
        else (
            LEFT,
            width - RIGHT,
            TOP,
            height - BOTTOM,
        )
    )
    slot = (right - left) / max(1, len(buckets))
    top_value = y_values[-1] or 1
    y_ticks = (
        ()
        if small
        else tuple(
            Tick(round(bottom - (bottom - top) * v / top_value, 2), y_label(v)) for v in y_values
        )
    )
    x_ticks = (
        ()
        if small or not buckets
        else time_ticks(buckets[0].start, width_minutes, len(buckets), left, slot)
    )
    frame = Frame(width, height, left, right, top, bottom, x_ticks, y_ticks, "UTC", y_unit)
    return frame, slot


# ---------------------------------------------------------------- charts


def throughput_chart(
    buckets: Sequence[Bucket],
    *,
    width_minutes: int,
    label: str,
    width: int = 360,
    height: int = 140,
    small: bool = False,
) -> BarChart:
    peak = max((b.processed for b in buckets), default=0)
    y_values = count_ticks(peak)
    unit = _bucket_unit(width_minutes)
    frame, slot = _frame(buckets, width_minutes, width, height, y_values, count_label, unit, small)
    scale = (frame.bottom - frame.top) / (peak if small else y_values[-1]) if peak else 0.0
    gap = 1.0 if slot >= 4 else 0.0
    bars = []
    for i, bucket in enumerate(buckets):
        ok_h = bucket.completed * scale
        failed_h = bucket.failed * scale
        rate = f" ({percent(bucket.failure_rate)} failed)" if bucket.failed else ""
        bars.append(
            Bar(
                x=round(frame.left + i * slot, 2),
                width=round(max(slot - gap, 0.5), 2),
                ok_y=round(frame.bottom - ok_h, 2),
                ok_height=round(ok_h, 2),
                failed_y=round(frame.bottom - ok_h - failed_h, 2),
                failed_height=round(failed_h, 2),
                title=f"{_span(bucket, width_minutes)}: {number(bucket.completed)} completed, "
                f"{number(bucket.failed)} failed{rate}",
            )
        )
    return BarChart(
        frame=frame,
        bars=tuple(bars),
        peak=peak,
        completed=sum(b.completed for b in buckets),
        failed=sum(b.failed for b in buckets),
        label=label,
        small=small,
    )


def failure_rate_chart(
    buckets: Sequence[Bucket],
    *,
    width_minutes: int,
    label: str,
    width: int = 360,
    height: int = 140,
    min_jobs: int = MIN_RATE_JOBS,
) -> RateChart:
    known = [b.failure_rate for b in buckets if b.processed >= min_jobs]
    y_values = rate_ticks(max((r for r in known if r is not None), default=0.0))
    frame, slot = _frame(
        buckets, width_minutes, width, height, y_values, rate_label, "% failed", False
    )
    top_value = y_values[-1]
    points: list[RatePoint] = []
    gaps: list[Gap] = []
    lines: list[str] = []
    run: list[RatePoint] = []
    for i, bucket in enumerate(buckets):
        x0 = frame.left + i * slot
        counts = f"{number(bucket.completed)} completed, {number(bucket.failed)} failed"
        rate = bucket.failure_rate
        if rate is None or bucket.processed < min_jobs:
            if len(run) > 1:
                lines.append(" ".join(f"{p.x},{p.y}" for p in run))
            run = []
            why = "no jobs" if rate is None else f"{counts}: too few jobs for a rate"
            gaps.append(Gap(round(x0, 2), round(slot, 2), f"{_span(bucket, width_minutes)}: {why}"))
            continue
        y = frame.bottom - (frame.bottom - frame.top) * rate / top_value
        point = RatePoint(
            round(x0 + slot / 2, 2),
            round(y, 2),
            f"{_span(bucket, width_minutes)}: {percent(rate)} failed ({counts})",
        )
        points.append(point)
        run.append(point)
    if len(run) > 1:
        lines.append(" ".join(f"{p.x},{p.y}" for p in run))
    return RateChart(
        frame=frame,
        lines=tuple(lines),
        points=tuple(points),
        gaps=tuple(gaps),
        label=label,
        processed=sum(b.processed for b in buckets),
        min_jobs=min_jobs,
    )
