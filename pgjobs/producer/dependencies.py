"""Dependencies between jobs: the shape rules checked before insert, and the safety net
that settles blocked jobs.

The protocol itself lives in SQL (schema.sql, `pgjobs_settle_blocked`): a job with
unfinished dependencies is created `blocked`; whatever finishes a job for good settles
its blocked children in the same transaction (pending, or failed / cancelled per their
`dependency_policy`), and the settling runs down chains. `DependencySweeper` only
repeats that settling for anything a crash between statements could have left behind
(for instance a caller that created jobs in autocommit mode across statements).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from pgjobs.clock import Clock
from pgjobs.errors import ValidationError
from pgjobs.producer.options import NewJob
from pgjobs.queries import query

log = logging.getLogger("pgjobs.maintenance")

SWEEP_BATCH = 1000


def check_acyclic(jobs: Sequence[NewJob], names: Mapping[UUID, str] | None = None) -> None:
    """Refuse a batch whose dependencies inside the batch form a cycle.

    Dependencies outside the batch already exist, so they cannot close a cycle: a
    cycle can only be made of jobs created together. `names` label jobs in the message
    (flows name them by ref); others are shown by id."""
    in_batch = {job.id for job in jobs}
    waiting = {
        job.id: [d for d in job.depends_on or () if d in in_batch] for job in jobs if job.depends_on
    }
    if not waiting:
        return
    children: dict[UUID, list[UUID]] = {}
    remaining: dict[UUID, int] = {}
    for job_id, parents in waiting.items():
        remaining[job_id] = len(parents)
        for parent in parents:
            children.setdefault(parent, []).append(job_id)
    # Kahn's algorithm: peel off jobs whose in-batch parents are all peeled.
    ready = [job_id for job_id in in_batch if remaining.get(job_id, 0) == 0]
    peeled = 0
    while ready:
        job_id = ready.pop()
        peeled += 1
        for child in children.get(job_id, ()):
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    if peeled < len(in_batch):
        stuck = {job_id for job_id, count in remaining.items() if count > 0}
        raise ValidationError(
            f"dependsOn forms a cycle: {_describe_cycle(stuck, waiting, names or {})}",
            field="dependsOn",
        )


def _describe_cycle(
    stuck: set[UUID], waiting: dict[UUID, list[UUID]], names: Mapping[UUID, str]
) -> str:
    """One cycle among the jobs left over, as 'a -> b -> a' (a depends on b)."""
    start = min(stuck)
    path = [start]
    seen = {start: 0}
    current = start
    while True:
        current = min(p for p in waiting[current] if p in stuck)
        if current in seen:
            cycle = [*path[seen[current] :], current]
            return " -> ".join(names.get(job_id, str(job_id)) for job_id in cycle)
        seen[current] = len(path)
        path.append(current)


class DependencySweeper:
    """Maintenance task: settles blocked jobs whose dependencies already decided."""

    name = "dependencies"
    lock_key = 7423510105

    def __init__(self, interval: float) -> None:
        self.interval = interval

    async def run(self, conn: psycopg.AsyncConnection[Any], clock: Clock) -> float:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                query("sweep_blocked_jobs"), {"now": clock.sql_now(), "limit": SWEEP_BATCH}
            )
            row = await cur.fetchone()
        assert row is not None
        if row["settled"]:
            log.warning("settled %d blocked jobs whose dependencies had finished", row["settled"])
        # A full batch means more may be waiting: come back at once, in a new transaction.
        return 0.0 if row["found"] >= SWEEP_BATCH else self.interval
