"""Deleting finished jobs past their retention: `pgjobs clean`, `POST /clean` and the
file-cleanup type's `target: "jobs"` all run `clean_finished` (the first two through
`Ops.clean`). It sits below the job types so the file-cleanup type can call it with
`ctx.app`'s connection, settings and clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row

from pgjobs import audit
from pgjobs.clock import Clock
from pgjobs.config import Settings
from pgjobs.errors import ValidationError
from pgjobs.models import Jsonable, jsonable
from pgjobs.queries import query

CLEAN_BATCH = 1000


@dataclass(frozen=True, slots=True)
class CleanReport(Jsonable):
    completed: int
    failed: int
    dry_run: bool
    batches: int
    completed_older_than_ms: int | None
    failed_older_than_ms: int | None

    @property
    def total(self) -> int:
        return self.completed + self.failed

    def to_dict(self) -> dict[str, Any]:
        return {**jsonable(self), "total": self.total}


async def clean_finished(
    connect: audit.Connect,
    settings: Settings,
    clock: Clock,
    *,
    completed_older_than_ms: int | None = None,
    failed_older_than_ms: int | None = None,
    dry_run: bool = False,
    batch_size: int = CLEAN_BATCH,
    actor: str,
) -> CleanReport:
    """Delete completed jobs older than one age and failed/cancelled jobs older than
    another, in batches of `batch_size`, and record it in the audit log as `actor`.
    With neither age given, the JOBS_CLEAN_* settings apply."""
    if completed_older_than_ms is None and failed_older_than_ms is None:
        completed_older_than_ms = settings.clean_completed_after_ms
        failed_older_than_ms = settings.clean_failed_after_ms
    for name, value in (
        ("completed-older-than", completed_older_than_ms),
        ("failed-older-than", failed_older_than_ms),
    ):
        if value is not None and value < 0:
            raise ValidationError(f"{name} must not be negative", field=name)
    params = {
        "completed_s": _seconds(completed_older_than_ms),
        "failed_s": _seconds(failed_older_than_ms),
        "now": clock.sql_now(),
        "batch": max(1, batch_size),
    }
    completed = failed = batches = 0
    async with connect() as conn, conn.cursor(row_factory=dict_row) as cur:
        if dry_run:
            await cur.execute(query("ops_clean_count"), params)
            row = await cur.fetchone()
            assert row is not None
            completed, failed = int(row["completed"]), int(row["failed"])
        else:
            while True:
                await cur.execute(query("ops_clean_batch"), params)
                row = await cur.fetchone()
                assert row is not None
                batches += 1
                completed += int(row["completed"])
                failed += int(row["failed"])
                if row["completed"] + row["failed"] < params["batch"]:
                    break
    report = CleanReport(
        completed=completed,
        failed=failed,
        dry_run=dry_run,
        batches=batches,
        completed_older_than_ms=completed_older_than_ms,
        failed_older_than_ms=failed_older_than_ms,
    )
    if not dry_run and report.total:
        await audit.record_after_commit(connect, clock, actor, "clean", None, report.to_dict())
    return report


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000
