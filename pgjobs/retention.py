"""Deleting finished jobs past their retention: `pgjobs clean` and the file-cleanup
type's `target: "jobs"` both run `clean_finished` (the first through `Ops.clean`). It
sits below the job types so the file-cleanup type can call it with `ctx.app`'s
connection, settings and clock.

Every path that deletes jobs in bulk (these, the workers' prune round, the dashboard's
clean and its delete of checked rows) deletes through `delete_jobs`: a job that a table
of the user's own still references with a foreign key that forbids the delete (an audit
log, as in the spec's "Audit Logging") is left in place and reported, rather than
failing the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import psycopg.errors
from psycopg.rows import dict_row

from pgjobs import audit
from pgjobs.clock import Clock
from pgjobs.config import Settings
from pgjobs.errors import ValidationError
from pgjobs.models import Jsonable, jsonable
from pgjobs.queries import query

CLEAN_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Skipped(Jsonable):
    """Jobs left in place because `table` references them through foreign key
    `constraint`, which forbids deleting them."""

    constraint: str
    table: str
    jobs: int

    def reason(self) -> str:
        return (
            f"table {self.table} still references them through foreign key "
            f"{self.constraint}; make it ON DELETE CASCADE or ON DELETE SET NULL to let "
            "them go (docs/operations.md)"
        )

    def line(self) -> str:
        return f"skipped {self.jobs} job(s): {self.reason()}"


@dataclass
class Deleted:
    """What one `delete_jobs` call did."""

    jobs: list[tuple[UUID, str]] = field(default_factory=list)  # (id, status) deleted
    skipped: dict[tuple[str, str], int] = field(default_factory=dict)  # (constraint, table)
    kept: dict[UUID, str] = field(default_factory=dict)  # id -> the constraint keeping it

    @property
    def completed(self) -> int:
        return sum(1 for _, status in self.jobs if status == "completed")

    def add_skipped(self, other: Deleted) -> None:
        for key, count in other.skipped.items():
            self.skipped[key] = self.skipped.get(key, 0) + count

    def skipped_list(self) -> tuple[Skipped, ...]:
        return tuple(Skipped(c, t, n) for (c, t), n in sorted(self.skipped.items()))


async def delete_jobs(conn: psycopg.AsyncConnection[Any], ids: list[UUID]) -> Deleted:
    """Delete jobs the caller has locked in its open transaction, except those another
    table's foreign key still points at. Runs in a savepoint: a reference the set-based
    check cannot see falls back to one job at a time, each in its own savepoint."""
    out = Deleted()
    if not ids:
        return out
    try:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("delete_finished_jobs"), {"ids": ids})
            rows = await cur.fetchall()
    except (psycopg.errors.ForeignKeyViolation, psycopg.errors.InsufficientPrivilege):
        # InsufficientPrivilege: the set-based check reads the referencing tables, which
        # this role may not be allowed to read (a user's audit table); the foreign keys
        # themselves are checked with their table owner's rights, so one at a time works.
        return await _delete_one_by_one(conn, ids)
    for row in rows:
        if row["constraint_name"] is None:
            out.jobs.append((row["id"], row["status"]))
        else:
            key = (row["constraint_name"], row["table_name"])
            out.skipped[key] = out.skipped.get(key, 0) + 1
            out.kept[row["id"]] = row["constraint_name"]
    return out


async def _delete_one_by_one(conn: psycopg.AsyncConnection[Any], ids: list[UUID]) -> Deleted:
    out = Deleted()
    for job_id in ids:
        try:
            async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(query("delete_finished_job"), {"id": job_id})
                row = await cur.fetchone()
        except psycopg.errors.ForeignKeyViolation as exc:
            key = (exc.diag.constraint_name or "?", exc.diag.table_name or "?")
            out.skipped[key] = out.skipped.get(key, 0) + 1
            out.kept[job_id] = key[0]
            continue
        if row is not None:
            out.jobs.append((row["id"], row["status"]))
    return out


@dataclass(frozen=True, slots=True)
class CleanReport(Jsonable):
    completed: int
    failed: int
    dry_run: bool
    batches: int
    completed_older_than_ms: int | None
    failed_older_than_ms: int | None
    # Jobs kept because a table of the user's own references them (see Skipped).
    skipped: tuple[Skipped, ...] = ()

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
    batch_size = max(1, batch_size)
    params: dict[str, Any] = {
        "completed_s": _seconds(completed_older_than_ms),
        "failed_s": _seconds(failed_older_than_ms),
        "now": clock.sql_now(),
        "batch": batch_size,
        "after_at": None,
        "after_id": None,
    }
    completed = failed = batches = 0
    skipped = Deleted()
    async with connect() as conn, conn.cursor(row_factory=dict_row) as cur:
        if dry_run:
            await cur.execute(query("ops_clean_count"), params)
            row = await cur.fetchone()
            assert row is not None
            completed, failed = int(row["completed"]), int(row["failed"])
        else:
            while True:
                async with conn.transaction():
                    await cur.execute(query("prune_finished_jobs"), params)
                    batch = await cur.fetchall()
                    deleted = await delete_jobs(conn, [r["id"] for r in batch])
                batches += 1
                completed += deleted.completed
                failed += len(deleted.jobs) - deleted.completed
                skipped.add_skipped(deleted)
                if len(batch) < batch_size:
                    break
                params["after_at"], params["after_id"] = cursor_after(batch)
    report = CleanReport(
        completed=completed,
        failed=failed,
        dry_run=dry_run,
        batches=batches,
        completed_older_than_ms=completed_older_than_ms,
        failed_older_than_ms=failed_older_than_ms,
        skipped=skipped.skipped_list(),
    )
    if not dry_run and report.total:
        await audit.record_after_commit(connect, clock, actor, "clean", None, report.to_dict())
    return report


def cursor_after(batch: list[dict[str, Any]]) -> tuple[datetime, UUID]:
    """Where the next batch of a pass starts: after the last job of this one."""
    return batch[-1]["completed_at"], batch[-1]["id"]


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000
