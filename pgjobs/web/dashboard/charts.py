"""Small charts drawn on the server: geometry for inline SVG.

A chart here is numbers only (coordinates, sizes, counts) plus tooltip text; the
template `dashboard/_charts.html` turns it into `<svg>` elements with autoescaping on,
so no markup is ever built from strings and no script or style is needed to draw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pgjobs.web.dashboard.format import number, percent


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

    width: int
    height: int
    bars: tuple[Bar, ...]
    peak: int
    completed: int
    failed: int
    label: str

    @property
    def empty(self) -> bool:
        return self.completed + self.failed == 0


@dataclass(frozen=True, slots=True)
class LineChart:
    """A share (0..1) per bucket as a polyline; buckets without jobs are left out."""

    width: int
    height: int
    points: str
    dots: tuple[tuple[float, float, str], ...]
    label: str

    @property
    def empty(self) -> bool:
        return not self.dots


def _label(bucket: Bucket, width_minutes: int) -> str:
    start = bucket.start.strftime("%H:%M")
    span = f"{start} UTC" if width_minutes == 1 else f"{start} UTC + {width_minutes} min"
    return f"{span}: {number(bucket.completed)} completed, {number(bucket.failed)} failed"


def throughput_chart(
    buckets: Sequence[Bucket],
    *,
    width_minutes: int,
    label: str,
    width: int = 360,
    height: int = 72,
) -> BarChart:
    peak = max((b.processed for b in buckets), default=0)
    slot = width / max(1, len(buckets))
    gap = 1.0 if slot >= 4 else 0.0
    bars = []
    for i, bucket in enumerate(buckets):
        ok_h = height * bucket.completed / peak if peak else 0.0
        failed_h = height * bucket.failed / peak if peak else 0.0
        bars.append(
            Bar(
                x=round(i * slot, 2),
                width=round(max(slot - gap, 0.5), 2),
                ok_y=round(height - ok_h, 2),
                ok_height=round(ok_h, 2),
                failed_y=round(height - ok_h - failed_h, 2),
                failed_height=round(failed_h, 2),
                title=_label(bucket, width_minutes),
            )
        )
    return BarChart(
        width=width,
        height=height,
        bars=tuple(bars),
        peak=peak,
        completed=sum(b.completed for b in buckets),
        failed=sum(b.failed for b in buckets),
        label=label,
    )


def failure_rate_chart(
    buckets: Sequence[Bucket],
    *,
    width_minutes: int,
    label: str,
    width: int = 360,
    height: int = 72,
) -> LineChart:
    slot = width / max(1, len(buckets))
    dots = []
    for i, bucket in enumerate(buckets):
        rate = bucket.failure_rate
        if rate is None:
            continue
        x = round(i * slot + slot / 2, 2)
        y = round(height - rate * height, 2)
        title = f"{_label(bucket, width_minutes)} ({percent(rate)} failed)"
        dots.append((x, y, title))
    points = " ".join(f"{x},{y}" for x, y, _ in dots)
    return LineChart(width=width, height=height, points=points, dots=tuple(dots), label=label)
