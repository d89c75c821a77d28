"""Producing and steering jobs: create (one, many, inside a caller's transaction), get,
cancel, retry.

Each operation is written once as a statement plus a decoder; `run_async` and
`run_sync` are the two thin ways of executing it, so the sync API is an adapter over
the same logic, and a caller's own connection (sync or async) can carry the work inside
its transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any, LiteralString, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import dict_row, tuple_row

from pgjobs.clock import Clock
from pgjobs.errors import Conflict, JobNotFound, ValidationError
from pgjobs.models import Job
from pgjobs.producer.dependencies import check_acyclic
from pgjobs.producer.options import NewJob
from pgjobs.queries import query

AsyncConn = psycopg.AsyncConnection[Any]
SyncConn = psycopg.Connection[Any]
Row = dict[str, Any]

T = TypeVar("T")

# Below this many plain jobs an INSERT beats setting up a COPY.
COPY_THRESHOLD = 64
# Insert attempts of one batch whose unique keys keep changing hands under it.
MAX_INSERT_ROUNDS = 5


@dataclass(frozen=True)
class Statement:
    sql: LiteralString
    params: dict[str, Any]


# --------------------------------------------------------------- statements


def insert_statement(jobs: Sequence[NewJob], clock: Clock, *, ids_only: bool = False) -> Statement:
    if len(jobs) == 1 and not jobs[0].depends_on and not ids_only:
        return _insert_one_statement(jobs[0], clock)
    return Statement(
        _insert_query(any(j.depends_on for j in jobs), ids_only),
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
            "dep_jobs": [j.id for j in jobs for _ in j.depends_on or ()],
            "dep_ids": [d for j in jobs for d in j.depends_on or ()],
            "policies": [j.dependency_policy for j in jobs],
            "rate_keys": [j.rate_limit_key for j in jobs],
            "metadatas": [j.metadata_json for j in jobs],
        },
    )


def _insert_one_statement(job: NewJob, clock: Clock) -> Statement:
    return Statement(query("insert_one_job"), _insert_one_params(job, clock))


def _insert_plain_statement(job: NewJob, clock: Clock) -> Statement:
    return Statement(query("insert_plain_job"), _insert_one_params(job, clock))


def _insert_one_params(job: NewJob, clock: Clock) -> dict[str, Any]:
    return {
        "now": clock.sql_now(),
        "id": job.id,
        "type": job.type,
        "queue": job.queue,
        "payload": job.payload_json,
        "priority": job.priority,
        "max_attempts": job.max_attempts,
        "delay": job.delay_ms,
        "run_at": job.run_at,
        "backoff": job.backoff_json,
        "timeout": job.timeout_ms,
        "unique_key": job.unique_key,
        "policy": job.dependency_policy,
        "rate_key": job.rate_limit_key,
        "metadata": job.metadata_json,
    }


def _is_plain_one(jobs: Sequence[NewJob]) -> bool:
    """One job without a unique key or dependencies: the common `create`."""
    return len(jobs) == 1 and jobs[0].unique_key is None and not jobs[0].depends_on


def _stored_plain(job: NewJob, row: tuple[Any, ...] | None) -> Job:
    """The job insert_plain_job stored: the values sent, with what the database decided
    (status, run_at, created_at) and its column defaults. Not reading the rest back
    saves a third of the statement's time."""
    assert row is not None  # a plain INSERT returns its row or raises
    status, run_at, created_at, attempts, progress = row  # insert_plain_job's RETURNING
    return Job(
        id=job.id,
        type=job.type,
        queue=job.queue,
        status=status,
        priority=job.priority,
        payload=json.loads(job.payload_json),
        progress=progress,
        attempts=attempts,
        max_attempts=job.max_attempts,
        delay_ms=job.delay_ms,
        timeout_ms=job.timeout_ms,
        created_at=created_at,
        started_at=None,
        completed_at=None,
        run_at=run_at,
        backoff=None if job.backoff_json is None else json.loads(job.backoff_json),
        dependency_policy=job.dependency_policy,
        rate_limit_key=job.rate_limit_key,
        metadata={} if job.metadata_json == "{}" else json.loads(job.metadata_json),
    )


def _insert_query(dependent: bool, ids_only: bool) -> LiteralString:
    if dependent:
        return query("insert_dependent_job_ids") if ids_only else query("insert_dependent_jobs")
    return query("insert_job_ids") if ids_only else query("insert_jobs")


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
    plain: list[NewJob] = []
    other: list[NewJob] = []
    for job in jobs:
        (plain if job.plain else other).append(job)
    if len(plain) < COPY_THRESHOLD:
        return [], list(jobs)
    return plain, other


def _outside_dependencies(jobs: Sequence[NewJob]) -> list[UUID]:
    batch = {j.id for j in jobs}
    return sorted({d for j in jobs for d in (j.depends_on or ()) if d not in batch})


def _unique_statement(jobs: Sequence[NewJob], clock: Clock) -> Statement:
    first: dict[str, NewJob] = {}
    for job in jobs:
        if job.unique_key is not None:
            first.setdefault(job.unique_key, job)
    return Statement(
        query("resolve_unique_keys"),
        {
            "now": clock.sql_now(),
            "keys": list(first),
            "states": [json.dumps(list(j.unique_states)) for j in first.values()],
            "periods": [j.unique_for_ms for j in first.values()],
        },
    )


def _held(job: NewJob, holder: Row) -> Conflict:
    return Conflict(
        f"unique key {job.unique_key!r} is held by job {holder['id']} ({holder['status']})"
    )


def _with_moves(job: NewJob, moves: dict[UUID, UUID]) -> NewJob:
    if not job.depends_on or not any(d in moves for d in job.depends_on):
        return job
    return replace(job, depends_on=sorted({moves.get(d, d) for d in job.depends_on}))


def insert_plan(
    jobs: Sequence[NewJob], clock: Clock, *, ids_only: bool = False
) -> Generator[Statement, list[Row], list[Row]]:
    """The statements that insert `jobs`, as a generator: it yields each statement and is
    sent that statement's rows; it returns, for each job in order, the stored row (its
    own, or the live job holding its unique key). Run it with `run_async`/`run_sync`.

    Usually one statement. A job whose unique key is held is resolved race-free: holders
    that no longer count are released and the insert is tried again; the jobs of the
    batch that depended on a job that was not inserted depend on its holder instead.
    """
    check_acyclic(jobs)
    stored: dict[UUID, Row] = {}
    moves: dict[UUID, UUID] = {}  # id of a job not inserted -> id of its key's holder
    todo = list(jobs)
    for _ in range(MAX_INSERT_ROUNDS):
        rows = yield insert_statement(todo, clock, ids_only=ids_only)
        holders: dict[str, Row] = {}
        inserted = 0
        for row in rows:
            if row["held"]:
                holders.setdefault(row["unique_key"], row)
                continue
            inserted += 1
            stored[row["id"]] = row
            if row["unique_key"] is not None:
                holders[row["unique_key"]] = row  # held by a job of this batch
        outside = _outside_dependencies(todo)
        if not inserted and outside:
            # The insert stores nothing when a dependency is unknown: name it.
            missing = yield Statement(query("missing_job_ids"), {"ids": outside})
            if missing:
                raise ValidationError(
                    f"dependsOn names an unknown job {missing[0]['id']}", field="dependsOn"
                )
        conflicted = [job for job in todo if job.id not in stored]
        if not conflicted:
            break
        # Per key (the first job asking for it sets the rules): a holder in a state that
        # counts answers at once; any other is looked at again by the database, which
        # releases it if it no longer counts (then the key is free: insert again).
        rules: dict[str, NewJob] = {}
        for job in conflicted:
            if job.unique_key is not None:
                rules.setdefault(job.unique_key, job)
        final: dict[str, Row | None] = {}
        undecided: list[NewJob] = []
        for key, job in rules.items():
            holder = holders.get(key)
            if holder is not None and holder["status"] in job.unique_states:
                final[key] = holder
            else:
                undecided.append(job)
        if undecided:
            found = {row["unique_key"]: row for row in (yield _unique_statement(undecided, clock))}
            for job in undecided:
                final[str(job.unique_key)] = found.get(str(job.unique_key))
        todo = []
        for job in conflicted:
            holder = final.get(job.unique_key) if job.unique_key is not None else None
            if holder is None:
                todo.append(job)  # its key is free now (or the batch must retry)
                continue
            if job.on_conflict == "raise":
                raise _held(job, holder)
            stored[job.id] = holder
            moves[job.id] = holder["id"]
        if not todo:
            break
        todo = [_with_moves(job, moves) for job in todo]
    else:
        raise Conflict(
            f"could not create {len(todo)} job(s): their unique keys changed hands "
            f"{MAX_INSERT_ROUNDS} times in a row; try again"
        )
    if moves:
        children = [
            job_id
            for job_id, row in stored.items()
            if row["id"] == job_id and any(d in moves for d in row["depends_on"] or ())
        ]
        if children:
            yield Statement(
                query("redirect_dependencies"),
                {
                    "now": clock.sql_now(),
                    "old": list(moves),
                    "new": list(moves.values()),
                    "children": children,
                },
            )
    return [stored[job.id] for job in jobs]


def decode_jobs(rows: list[Row]) -> list[Job]:
    return [Job.from_row(row) for row in rows]


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


async def run_async(conn: AsyncConn, plan: Generator[Statement, list[Row], T]) -> T:
    """Execute a plan of statements (see `insert_plan`) on `conn`: each statement's rows
    are sent back into the plan. A statement that fails with a database error has the
    error thrown into the plan, which may turn it into its own (a unique violation into
    `Conflict`); inside a transaction the plan cannot go on after one."""
    try:
        statement = next(plan)
        while True:
            try:
                rows = await fetch_all_async(conn, statement)
            except psycopg.Error as exc:
                statement = plan.throw(exc)
            else:
                statement = plan.send(rows)
    except StopIteration as done:
        result: T = done.value
        return result


def run_sync(conn: SyncConn, plan: Generator[Statement, list[Row], T]) -> T:
    """`run_async` on a sync connection."""
    try:
        statement = next(plan)
        while True:
            try:
                rows = fetch_all_sync(conn, statement)
            except psycopg.Error as exc:
                statement = plan.throw(exc)
            else:
                statement = plan.send(rows)
    except StopIteration as done:
        result: T = done.value
        return result


async def insert_async(conn: AsyncConn, jobs: Sequence[NewJob], clock: Clock) -> list[Job]:
    """Insert `jobs` inside the caller's transaction (or autocommit) and return them."""
    if _is_plain_one(jobs):
        statement = _insert_plain_statement(jobs[0], clock)
        # A positional row: naming its columns for a dict row cost the client 6-9 us of
        # the ~140 us this statement takes it.
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(statement.sql, statement.params)
            return [_stored_plain(jobs[0], await cur.fetchone())]
    return decode_jobs(await run_async(conn, insert_plan(jobs, clock)))


def insert_sync(conn: SyncConn, jobs: Sequence[NewJob], clock: Clock) -> list[Job]:
    if _is_plain_one(jobs):
        statement = _insert_plain_statement(jobs[0], clock)
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(statement.sql, statement.params)
            return [_stored_plain(jobs[0], cur.fetchone())]
    return decode_jobs(run_sync(conn, insert_plan(jobs, clock)))


async def create_many_async(conn: AsyncConn, jobs: Sequence[NewJob], clock: Clock) -> list[UUID]:
    """Bulk insert; plain jobs go through COPY. Returns the ids in request order
    (for a job whose unique key was taken, the id of the job holding it)."""
    copied, inserted = split_for_copy(jobs, clock)
    if copied:
        async with conn.cursor() as cur, cur.copy(query("copy_plain_jobs")) as copy:
            for job in copied:
                await copy.write_row(copy_row(job))
    stored = await run_async(conn, insert_plan(inserted, clock, ids_only=True)) if inserted else []
    return _ids_in_order(jobs, copied, stored)


def create_many_sync(conn: SyncConn, jobs: Sequence[NewJob], clock: Clock) -> list[UUID]:
    copied, inserted = split_for_copy(jobs, clock)
    if copied:
        with conn.cursor() as cur, cur.copy(query("copy_plain_jobs")) as copy:
            for job in copied:
                copy.write_row(copy_row(job))
    stored = run_sync(conn, insert_plan(inserted, clock, ids_only=True)) if inserted else []
    return _ids_in_order(jobs, copied, stored)


def _ids_in_order(jobs: Sequence[NewJob], copied: list[NewJob], stored: list[Row]) -> list[UUID]:
    if not copied:
        return [row["id"] for row in stored]
    if len(copied) == len(jobs):  # all copied (the common bulk): no lookups by id
        return [job.id for job in jobs]
    stored_iter = iter(stored)
    copied_ids = {job.id for job in copied}
    return [job.id if job.id in copied_ids else next(stored_iter)["id"] for job in jobs]
