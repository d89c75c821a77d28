"""Producing and steering jobs: create (one, many, inside a caller's transaction), get,
cancel, retry.

Each operation is written once as a statement plus a decoder; `run_async` and
`run_sync` are the two thin ways of executing it, so the sync API is an adapter over
the same logic, and a caller's own connection (sync or async) can carry the work inside
its transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from pgjobs.clock import Clock
from pgjobs.errors import Conflict, JobNotFound, ValidationError
from pgjobs.models import Job
from pgjobs.options import NewJob
from pgjobs.queries import query

AsyncConn = psycopg.AsyncConnection[Any]
SyncConn = psycopg.Connection[Any]
Row = dict[str, Any]

# Below this many plain jobs an INSERT beats setting up a COPY.
COPY_THRESHOLD = 64


@dataclass(frozen=True)
class Statement:
    sql: LiteralString
    params: dict[str, Any]


# --------------------------------------------------------------- statements


def insert_statement(jobs: Sequence[NewJob], clock: Clock) -> Statement:
    return Statement(
        query("insert_jobs"),
        {
            "now": clock.sql_now(),
            "ids": [j.id for j in jobs],
            "types": [j.type for j in jobs],
            "queues": [j.queue for j in jobs],
            "payloads": [j.payload_json for j in jobs],
            "priorities": [j.priority for j in jobs],
            "max_attempts": [j.max_attempts for j in jobs],
            "delays": [j.delay_ms for j in jobs],
            "run_ats": [j.run_at for j in jobs],
            "backoffs": [j.backoff_json for j in jobs],
            "timeouts": [j.timeout_ms for j in jobs],
            "unique_keys": [j.unique_key for j in jobs],
            "depends_ons": [
                json.dumps([str(d) for d in j.depends_on]) if j.depends_on else None for j in jobs
            ],
            "policies": [j.dependency_policy for j in jobs],
            "rate_keys": [j.rate_limit_key for j in jobs],
            "metadatas": [j.metadata_json for j in jobs],
        },
    )


def copy_row(job: NewJob) -> tuple[Any, ...]:
    return (
        job.id,
        job.type,
        job.queue,
        job.payload_json,
        job.priority,
        job.max_attempts,
        job.timeout_ms,
        job.backoff_json,
        job.rate_limit_key,
        job.metadata_json,
    )


def split_for_copy(jobs: Sequence[NewJob], clock: Clock) -> tuple[list[NewJob], list[NewJob]]:
    """(rows for COPY, rows for INSERT). COPY uses the database clock, so a frozen
    test clock sends everything through INSERT."""
    if clock.frozen:
        return [], list(jobs)
    plain = [j for j in jobs if j.plain]
    if len(plain) < COPY_THRESHOLD:
        return [], list(jobs)
    return plain, [j for j in jobs if not j.plain]


def _missing_dependencies_statement(jobs: Sequence[NewJob]) -> Statement | None:
    batch = {j.id for j in jobs}
    wanted = sorted({d for j in jobs for d in (j.depends_on or ()) if d not in batch})
    if not wanted:
        return None
    return Statement(query("missing_job_ids"), {"ids": wanted})


def _check_missing(rows: list[Row]) -> None:
    if rows:
        raise ValidationError(f"dependsOn names an unknown job {rows[0]['id']}", field="dependsOn")


def decode_inserted(jobs: Sequence[NewJob], inserted: list[Row], holders: list[Row]) -> list[Job]:
    """The stored job for each request, in order: its own row, or the live job that
    already held its unique key."""
    by_id = {row["id"]: row for row in inserted}
    by_key = {row["unique_key"]: row for row in holders}
    out: list[Job] = []
    for job in jobs:
        row = by_id.get(job.id) or by_key.get(job.unique_key)
        if row is None:
            raise Conflict(f"unique key {job.unique_key!r} is held by a job that just finished")
        out.append(Job.from_row(row))
    return out


def _unresolved_keys(jobs: Sequence[NewJob], inserted: list[Row]) -> list[str]:
    done = {row["id"] for row in inserted}
    return [j.unique_key for j in jobs if j.id not in done and j.unique_key is not None]


def get_statement(job_id: UUID) -> Statement:
    return Statement(query("get_job"), {"id": job_id})


def decode_job(job_id: UUID, row: Row | None) -> Job:
    if row is None:
        raise JobNotFound(f"no job with id {job_id}")
    return Job.from_row(row)


def cancel_statement(job_id: UUID, clock: Clock) -> Statement:
    return Statement(query("cancel_job"), {"id": job_id, "now": clock.sql_now()})


def retry_statement(job_id: UUID, clock: Clock) -> Statement:
    return Statement(query("retry_job"), {"id": job_id, "now": clock.sql_now()})


def decode_transition(action: str, allowed: str) -> Callable[[UUID, Row | None], Job]:
    def decode(job_id: UUID, row: Row | None) -> Job:
        if row is None:
            raise JobNotFound(f"no job with id {job_id}")
        if row.get("id") is None:
            raise Conflict(
                f"job {job_id} is {row['previous_status']}; only {allowed} jobs can be {action}"
            )
        return Job.from_row(row)

    return decode


decode_cancel = decode_transition("cancelled", "pending, delayed, blocked or active")
decode_retry = decode_transition("retried", "failed or cancelled")


def parse_job_id(value: UUID | str) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise ValidationError(f"invalid job id {str(value)[:80]!r}: expected a UUID") from None


# --------------------------------------------------------------- execution


async def fetch_one_async(conn: AsyncConn, statement: Statement) -> Row | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(statement.sql, statement.params)
        return await cur.fetchone()


def fetch_one_sync(conn: SyncConn, statement: Statement) -> Row | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(statement.sql, statement.params)
        return cur.fetchone()


async def fetch_all_async(conn: AsyncConn, statement: Statement) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(statement.sql, statement.params)
        return await cur.fetchall()


def fetch_all_sync(conn: SyncConn, statement: Statement) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(statement.sql, statement.params)
        return cur.fetchall()


async def insert_async(conn: AsyncConn, jobs: Sequence[NewJob], clock: Clock) -> list[Job]:
    """Insert `jobs` inside the caller's transaction (or autocommit) and return them."""
    check = _missing_dependencies_statement(jobs)
    if check is not None:
        _check_missing(await fetch_all_async(conn, check))
    inserted = await fetch_all_async(conn, insert_statement(jobs, clock))
    keys = _unresolved_keys(jobs, inserted)
    holders = []
    if keys:
        holders = await fetch_all_async(
            conn, Statement(query("live_jobs_by_unique_key"), {"keys": keys})
        )
    return decode_inserted(jobs, inserted, holders)


def insert_sync(conn: SyncConn, jobs: Sequence[NewJob], clock: Clock) -> list[Job]:
    check = _missing_dependencies_statement(jobs)
    if check is not None:
        _check_missing(fetch_all_sync(conn, check))
    inserted = fetch_all_sync(conn, insert_statement(jobs, clock))
    keys = _unresolved_keys(jobs, inserted)
    holders = []
    if keys:
        holders = fetch_all_sync(conn, Statement(query("live_jobs_by_unique_key"), {"keys": keys}))
    return decode_inserted(jobs, inserted, holders)


async def create_many_async(conn: AsyncConn, jobs: Sequence[NewJob], clock: Clock) -> list[UUID]:
    """Bulk insert; plain jobs go through COPY. Returns the ids in request order
    (for a job whose unique key was taken, the id of the job holding it)."""
    copied, inserted = split_for_copy(jobs, clock)
    if copied:
        async with conn.cursor() as cur, cur.copy(query("copy_plain_jobs")) as copy:
            for job in copied:
                await copy.write_row(copy_row(job))
    stored = await insert_async(conn, inserted, clock) if inserted else []
    return _ids_in_order(jobs, copied, stored)


def create_many_sync(conn: SyncConn, jobs: Sequence[NewJob], clock: Clock) -> list[UUID]:
    copied, inserted = split_for_copy(jobs, clock)
    if copied:
        with conn.cursor() as cur, cur.copy(query("copy_plain_jobs")) as copy:
            for job in copied:
                copy.write_row(copy_row(job))
    stored = insert_sync(conn, inserted, clock) if inserted else []
    return _ids_in_order(jobs, copied, stored)


def _ids_in_order(jobs: Sequence[NewJob], copied: list[NewJob], stored: list[Job]) -> list[UUID]:
    if not copied:
        return [job.id for job in stored]
    stored_iter = iter(stored)
    copied_ids = {job.id for job in copied}
    return [job.id if job.id in copied_ids else next(stored_iter).id for job in jobs]
