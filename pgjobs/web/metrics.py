"""`GET /metrics`: Prometheus text read from the database at scrape time.

Nothing is counted in process memory: every value comes from PostgreSQL, so any number
of API servers and workers agree, and a restart loses nothing.

- `jobs_processed_total{queue,type,status}`: completed runs (job_results rows) and
  failed attempts (job_failures rows; a cancelled run counts as `cancelled`). Both tables
  only grow while jobs exist, so the counters only go down when finished jobs are pruned,
  which Prometheus treats as a counter reset.
- `job_duration_seconds{queue,type}`: histogram of completed run durations, with
  cumulative buckets computed in SQL over the retained results.
- `queue_size{queue,status}`: jobs per status now (`waiting` as BullMQ counts it).
- `pgjobs_workers`, `pgjobs_oldest_pending_job_age_seconds{queue}`,
  `pgjobs_jobs_dead_tuples`, `pgjobs_jobs_live_tuples`,
  `pgjobs_oldest_transaction_age_seconds`, `pgjobs_queue_paused{queue}`,
  `pgjobs_queue_health_score{queue}`.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pgjobs.ops import MetricsSnapshot

QUEUE_STATUSES = (
    "waiting",
    "active",
    "delayed",
    "paused",
    "blocked",
    "completed",
    "failed",
    "cancelled",
)


class SnapshotCollector(Collector):
    """Turns one database snapshot into metric families."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        processed = CounterMetricFamily(
            "jobs_processed",
            "Job runs processed, by outcome (completed runs and failed attempts)",
            labels=["queue", "type", "status"],
        )
        for queue, type_, status, count in snap.processed:
            processed.add_metric([queue, type_, status], count)
        yield processed

        durations = HistogramMetricFamily(
            "job_duration_seconds",
            "Duration of completed job runs",
            labels=["queue", "type"],
        )
        for series in snap.durations:
            buckets = [(_bound(le), float(n)) for le, n in series.buckets]
            buckets.append(("+Inf", float(series.count)))
            durations.add_metric([series.queue, series.type], buckets, series.sum_s)
        yield durations

        size = GaugeMetricFamily(
            "queue_size", "Jobs in each queue by status", labels=["queue", "status"]
        )
        paused = GaugeMetricFamily(
            "pgjobs_queue_paused", "1 when the queue is paused", labels=["queue"]
        )
        health = GaugeMetricFamily(
            "pgjobs_queue_health_score", "Queue health score, 0-100", labels=["queue"]
        )
        for q in snap.queues:
            for status in QUEUE_STATUSES:
                size.add_metric([q.name, status], float(getattr(q, status)))
            paused.add_metric([q.name], 1.0 if q.is_paused else 0.0)
            health.add_metric([q.name], float(q.health_score))
        yield size
        yield paused
        yield health

        oldest = GaugeMetricFamily(
            "pgjobs_oldest_pending_job_age_seconds",
            "Age of the oldest job waiting to run, per queue",
            labels=["queue"],
        )
        for queue, age in sorted(snap.oldest_pending_s.items()):
            oldest.add_metric([queue], age)
        yield oldest

        yield GaugeMetricFamily(
            "pgjobs_workers", "Live worker processes (recent heartbeat)", value=snap.workers
        )
        db = snap.database
        yield GaugeMetricFamily(
            "pgjobs_jobs_dead_tuples", "Dead tuples in the jobs table", value=db.dead_tuples
        )
        yield GaugeMetricFamily(
            "pgjobs_jobs_live_tuples", "Live tuples in the jobs table", value=db.live_tuples
        )
        yield GaugeMetricFamily(
            "pgjobs_oldest_transaction_age_seconds",
            "Age of the oldest open transaction on the server (holds back vacuum)",
            value=db.oldest_transaction_s or 0.0,
        )


def _bound(seconds: float) -> str:
    return repr(float(seconds))


def render(snapshot: MetricsSnapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
