"""Flows: a tree or DAG of jobs created together, all or nothing.

A flow is a list of jobs, each either a `NewJob` from `app.build()` (whose `depends_on`
may name other built jobs) or an API-shaped mapping
`{"ref", "type", "queue", "payload", "options"}` whose `options.dependsOn` may name
other jobs of the flow by their `ref` as well as existing jobs by id. Ids are assigned
here, before anything is sent, so the whole flow goes to PostgreSQL as one insert
statement: one round trip, atomic on its own, whatever its size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

from pgjobs.clock import Clock
from pgjobs.config import Settings
from pgjobs.contract.jsonschema import shape_fields
from pgjobs.contract.shapes import FlowCreate
from pgjobs.errors import ValidationError
from pgjobs.ids import uuid7
from pgjobs.producer import statements as client
from pgjobs.producer.dependencies import check_acyclic
from pgjobs.producer.options import NewJob, new_job_from_request
from pgjobs.producer.statements import AsyncConn, SyncConn
from pgjobs.validation import MAX_FLOW_JOBS, MAX_KEY_LENGTH

MAX_API_FLOW = MAX_FLOW_JOBS
FlowItem = NewJob | Mapping[str, Any]


@dataclass(frozen=True)
class CreatedFlow:
    """The ids of a created flow, in the order its jobs were given, and by ref.

    A job whose unique key was already held is represented by the holder's id."""

    ids: list[UUID]
    refs: dict[str, UUID] = field(default_factory=dict)

    def __getitem__(self, ref: str) -> UUID:
        return self.refs[ref]

    def __len__(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ids": [str(i) for i in self.ids],
            "refs": {ref: str(i) for ref, i in self.refs.items()},
            "count": len(self.ids),
        }


@dataclass(frozen=True)
class FlowPlan:
    jobs: list[NewJob]
    refs: dict[str, int]  # ref -> index in jobs

    @property
    def needs_transaction(self) -> bool:
        """One insert statement is atomic by itself; resolving held unique keys may
        take more statements, which must then share a transaction."""
        return any(job.unique_key is not None for job in self.jobs)

    @property
    def start_queues(self) -> set[str]:
        """Queues of the jobs that can start at once (the others wait on dependencies)."""
        return {job.queue for job in self.jobs if not job.depends_on}

    def created(self, rows: Sequence[Mapping[str, Any]]) -> CreatedFlow:
        ids = [row["id"] for row in rows]
        return CreatedFlow(ids, {ref: ids[index] for ref, index in self.refs.items()})


def plan_flow(settings: Settings, items: Iterable[FlowItem]) -> FlowPlan:
    """Validate a flow and give every job its id; refs in dependsOn become those ids."""
    items = list(items)
    ids = [item.id if isinstance(item, NewJob) else uuid7() for item in items]
    refs: dict[str, int] = {}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            continue
        ref = item.get("ref")
        if ref is None:
            continue
        if not isinstance(ref, str) or not 1 <= len(ref) <= MAX_KEY_LENGTH:
            raise ValidationError(
                f"job {index}: ref must be a string of 1 to {MAX_KEY_LENGTH} characters",
                field="ref",
            )
        if ref in refs:
            raise ValidationError(
                f"job {index}: ref {ref!r} is already used by job {refs[ref]}", field="ref"
            )
        refs[ref] = index
    by_ref = {ref: str(ids[index]) for ref, index in refs.items()}
    jobs: list[NewJob] = []
    for index, item in enumerate(items):
        if isinstance(item, NewJob):
            jobs.append(item)
            continue
        try:
            job = new_job_from_request(settings, _resolve_refs(item, by_ref))
        except ValidationError as exc:
            raise ValidationError(f"job {index}: {exc}", field=exc.field) from None
        jobs.append(replace(job, id=ids[index]))
    names = {ids[index]: f"{ref!r}" for ref, index in refs.items()}
    check_acyclic(jobs, names)
    return FlowPlan(jobs, refs)


def _resolve_refs(item: Any, by_ref: dict[str, str]) -> Any:
    """The API-shaped job without its ref, with dependsOn refs turned into ids."""
    if not isinstance(item, Mapping):
        return item  # new_job_from_request reports the shape error
    body = {k: v for k, v in item.items() if k != "ref"}
    options = body.get("options")
    if not isinstance(options, Mapping):
        return body
    for name in ("dependsOn", "depends_on"):
        deps = options.get(name)
        if deps is None:
            continue
        if isinstance(deps, str):
            deps = [deps]
        if isinstance(deps, list):
            resolved = [by_ref.get(d, d) if isinstance(d, str) else d for d in deps]
            body["options"] = {**options, name: resolved}
    return body


def flow_request_jobs(body: Mapping[str, Any]) -> list[Any]:
    """The job list of a `POST /api/flows` body `{"jobs": [...]}`."""
    unknown = sorted(set(body) - set(shape_fields(FlowCreate)))
    if unknown:
        raise ValidationError(f"unknown field '{unknown[0]}'", field=unknown[0])
    jobs = body.get("jobs")
    if not isinstance(jobs, list) or not 1 <= len(jobs) <= MAX_API_FLOW:
        raise ValidationError(
            f"jobs must be a list of 1 to {MAX_API_FLOW} job objects", field="jobs"
        )
    return jobs


async def create_flow_async(conn: AsyncConn, plan: FlowPlan, clock: Clock) -> CreatedFlow:
    """Insert the flow on `conn`. The caller provides the transaction if
    `plan.needs_transaction` (or lets `conn`'s own transaction hold it)."""
    if not plan.jobs:
        return CreatedFlow([])
    rows = await client.run_async(conn, client.insert_plan(plan.jobs, clock, ids_only=True))
    return plan.created(rows)


def create_flow_sync(conn: SyncConn, plan: FlowPlan, clock: Clock) -> CreatedFlow:
    if not plan.jobs:
        return CreatedFlow([])
    rows = client.run_sync(conn, client.insert_plan(plan.jobs, clock, ids_only=True))
    return plan.created(rows)
