"""Schedule operations shared by the Python API, the CLI and the REST API: list, get,
create, update, enable/disable and delete the definitions in `job_schedules`.

Each operation is written once, as a generator that yields statements and receives
their rows; `pgjobs.producer.statements.run_async` / `run_sync` execute it, in one transaction on an
async or a sync connection (a caller's open transaction becomes a savepoint). Every edit
recomputes `next_run_at` with the database clock (or the test clock), so it takes
effect on the next maintenance round without restarting anything.

Errors: `ValidationError` (bad field, quoting it), `NotFound` (no such schedule),
`Conflict` (the name is taken).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import psycopg
import psycopg.errors

from pgjobs.clock import Clock
from pgjobs.config import Settings
from pgjobs.errors import Conflict, NotFound, ValidationError
from pgjobs.models import priority_name
from pgjobs.producer.options import (
    NewJob,
    encode_payload,
    keyword_options,
    new_job,
    parse_priority,
    validate_queue,
    validate_type,
)
from pgjobs.producer.statements import (
    Statement,
    run_async,
    run_sync,
)
from pgjobs.queries import query
from pgjobs.schedules.cron import Cron, parse_cron, parse_misfire, parse_timezone
from pgjobs.validation import MAX_CATCH_UP, MAX_DESCRIPTION, SCHEDULE_NAME

T = TypeVar("T")
Row = dict[str, Any]
Operation = Generator[Statement, list[Row], T]

NAME = SCHEDULE_NAME
# Job options a schedule may carry for the jobs it fires. A unique key, dependencies
# or a delay have no meaning for a job that recurs.
SCHEDULE_JOB_OPTIONS = (
    "attempts",
    "max_retries",
    "backoff",
    "timeout",
    "rate_limit_key",
    "metadata",
)

# Field names accepted by create/update: the canonical name, plus the spellings the
# table (cron_expression, misfire_policy), the spec's CLI (tz, desc) and camelCase
# JSON bodies use.
FIELD_ALIASES: dict[str, str] = {
    "name": "name",
    "type": "type",
    "queue": "queue",
    "cron": "cron",
    "cron_expression": "cron",
    "cronExpression": "cron",
    "payload": "payload",
    "timezone": "timezone",
    "tz": "timezone",
    "description": "description",
    "desc": "description",
    "misfire": "misfire",
    "misfire_policy": "misfire",
    "misfirePolicy": "misfire",
    "max_catch_up": "max_catch_up",
    "maxCatchUp": "max_catch_up",
    "priority": "priority",
    "enabled": "enabled",
    "options": "options",
}
REQUIRED = ("name", "type", "cron")


@dataclass(frozen=True, slots=True)
class Schedule:
    """One row of job_schedules."""

    id: UUID
    name: str
    type: str
    queue: str
    cron_expression: str
    timezone: str
    payload: dict[str, Any]
    description: str | None
    enabled: bool
    misfire_policy: str
    max_catch_up: int
    priority: int
    options: dict[str, Any]
    last_run_at: datetime | None
    next_run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    upcoming: tuple[datetime, ...] = field(default=(), compare=False)

    @classmethod
    def from_row(cls, row: Row) -> Schedule:
        return cls(**{name: row[name] for name in _COLUMNS})

    def cron(self) -> Cron:
        return Cron.parse(self.cron_expression, self.timezone)

    def next_runs(self, count: int) -> tuple[datetime, ...]:
        """The next `count` fire instants from next_run_at on (none while disabled)."""
        if self.next_run_at is None or count <= 0:
            return ()
        cron = self.cron()
        runs = [self.next_run_at]
        while len(runs) < count:
            runs.append(cron.next_fire(runs[-1]))
        return tuple(runs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view, as the CLI and the REST API show it."""
        out = {name: _jsonable(getattr(self, name)) for name in _COLUMNS}
        out["priority_name"] = priority_name(self.priority)
        if self.upcoming:
            out["upcoming"] = [at.isoformat() for at in self.upcoming]
        return out


_COLUMNS = tuple(name for name in Schedule.__dataclass_fields__ if name != "upcoming")


def _jsonable(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


# ---------------------------------------------------------------- validation


def normalize_fields(fields: Mapping[str, Any], *, partial: bool) -> dict[str, Any]:
    """Map accepted spellings to canonical names; refuse unknown or repeated fields."""
    if not isinstance(fields, Mapping):
        raise ValidationError("a schedule must be a JSON object")
    out: dict[str, Any] = {}
    for key, value in fields.items():
        name = FIELD_ALIASES.get(key)
        if name is None:
            raise ValidationError(f"unknown schedule field '{key}'", field=key)
        if name in out:
            raise ValidationError(f"schedule field '{key}' is given twice", field=key)
        out[name] = value
    if not partial:
        for name in REQUIRED:
            if out.get(name) is None:
                raise ValidationError(f"missing schedule field '{name}'", field=name)
    return out


def validate_name(value: Any) -> str:
    if not isinstance(value, str) or not NAME.match(value) or value.endswith("\n"):
        shown = value if isinstance(value, str) else type(value).__name__
        raise ValidationError(
            f"invalid schedule name {shown!r}: use 1-255 characters A-Z a-z 0-9 . _ : @ - "
            "starting with a letter or digit",
            field="name",
        )
    return value


def _description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION or "\x00" in value:
        raise ValidationError(
            f"description must be text of at most {MAX_DESCRIPTION} characters without NUL",
            field="description",
        )
    return value


def _max_catch_up(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CATCH_UP:
        raise ValidationError(
            f"max_catch_up must be an integer from 0 to {MAX_CATCH_UP} (got {value!r})",
            field="max_catch_up",
        )
    return value


def _enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"enabled must be true or false (got {value!r})", field="enabled")
    return value


def _job_options(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError("options must be a JSON object", field="options")
    options = keyword_options(value)
    for key in options:
        if key not in SCHEDULE_JOB_OPTIONS:
            raise ValidationError(
                f"option '{key}' cannot be used by a schedule; allowed: "
                + ", ".join(SCHEDULE_JOB_OPTIONS),
                field=key,
            )
    return options


@dataclass(frozen=True, slots=True)
class Definition:
    """A complete, validated schedule definition, ready to store."""

    name: str
    type: str
    queue: str
    cron_expression: str
    timezone: str
    payload_json: str
    description: str | None
    enabled: bool
    misfire_policy: str
    max_catch_up: int
    priority: int
    options: dict[str, Any]

    def cron(self) -> Cron:
        return Cron.parse(self.cron_expression, self.timezone)

    def params(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "queue": self.queue,
            "cron_expression": self.cron_expression,
            "timezone": self.timezone,
            "payload": self.payload_json,
            "description": self.description,
            "enabled": self.enabled,
            "misfire_policy": self.misfire_policy,
            "max_catch_up": self.max_catch_up,
            "priority": self.priority,
            "options": json.dumps(self.options),
        }


def build_definition(settings: Settings, fields: Mapping[str, Any]) -> Definition:
    """Validate canonical `fields` (all present) into a Definition.

    The job a fire creates is validated here too, with the same rules as any other
    job, so a schedule that is stored can always fire."""
    cron = parse_cron(fields["cron"])
    timezone = fields.get("timezone") or "UTC"
    parse_timezone(timezone)
    definition = Definition(
        name=validate_name(fields["name"]),
        type=validate_type(fields["type"]),
        queue=validate_queue(fields.get("queue") or "default"),
        cron_expression=cron.text,
        timezone=timezone,
        payload_json=encode_payload(fields.get("payload"), settings.max_payload_bytes),
        description=_description(fields.get("description")),
        enabled=_enabled(fields.get("enabled", True)),
        misfire_policy=parse_misfire(fields.get("misfire")),
        max_catch_up=_max_catch_up(fields.get("max_catch_up", 100)),
        priority=parse_priority(fields.get("priority")),
        options=_job_options(fields.get("options")),
    )
    job_for_fire(settings, definition, json.loads(definition.payload_json), {})
    return definition


def job_for_fire(
    settings: Settings,
    definition: Definition | Schedule,
    payload: Any,
    fire_metadata: Mapping[str, Any],
) -> NewJob:
    """The validated NewJob a fire of `definition` enqueues (fire details in metadata)."""
    options = dict(definition.options)
    metadata = {**(options.pop("metadata", None) or {}), **fire_metadata}
    return new_job(
        settings,
        definition.type,
        payload,
        queue=definition.queue,
        priority=definition.priority,
        metadata=metadata,
        **options,
    )


def _definition_of(schedule: Schedule) -> dict[str, Any]:
    return {
        "name": schedule.name,
        "type": schedule.type,
        "queue": schedule.queue,
        "cron": schedule.cron_expression,
        "timezone": schedule.timezone,
        "payload": schedule.payload,
        "description": schedule.description,
        "enabled": schedule.enabled,
        "misfire": schedule.misfire_policy,
        "max_catch_up": schedule.max_catch_up,
        "priority": schedule.priority,
        "options": schedule.options,
    }


def schedule_fields(
    name: str,
    type: str,
    cron: str,
    payload: Any = None,
    *,
    queue: str = "default",
    timezone: str = "UTC",
    description: str | None = None,
    misfire: str = "skip",
    max_catch_up: int = 100,
    priority: int | str | None = None,
    enabled: bool = True,
    options: Mapping[str, Any] | None = None,
    **job_options: Any,
) -> dict[str, Any]:
    """The fields of a schedule from Python keyword arguments (job options such as
    attempts or timeout may be given directly)."""
    return {
        "name": name,
        "type": type,
        "cron": cron,
        "payload": payload,
        "queue": queue,
        "timezone": timezone,
        "description": description,
        "misfire": misfire,
        "max_catch_up": max_catch_up,
        "priority": priority,
        "enabled": enabled,
        "options": {**(options or {}), **job_options},
    }


# ---------------------------------------------------------------- operations


def _list_op() -> Operation[list[Schedule]]:
    rows = yield Statement(query("schedule_list"), {})
    return [Schedule.from_row(row) for row in rows]


def _get_op(name: str, upcoming: int) -> Operation[Schedule]:
    rows = yield Statement(query("schedule_get"), {"name": name})
    if not rows:
        raise NotFound(f"no schedule named {name!r}")
    schedule = Schedule.from_row(rows[0])
    if upcoming:
        schedule = _with_upcoming(schedule, upcoming)
    return schedule


def _with_upcoming(schedule: Schedule, count: int) -> Schedule:
    try:
        return replace(schedule, upcoming=schedule.next_runs(count))
    except ValidationError:
        return schedule  # edited into an invalid state by hand: nothing to predict


def _create_op(settings: Settings, clock: Clock, fields: Mapping[str, Any]) -> Operation[Schedule]:
    definition = build_definition(settings, normalize_fields(fields, partial=False))
    rows = yield Statement(query("schedule_clock"), {"now": clock.sql_now()})
    now = rows[0]["now"]
    next_run_at = definition.cron().next_fire(now) if definition.enabled else None
    rows = yield Statement(
        query("schedule_insert"), {**definition.params(), "now": now, "next_run_at": next_run_at}
    )
    if not rows:
        raise Conflict(f"a schedule named {definition.name!r} already exists")
    return Schedule.from_row(rows[0])


def _update_op(
    settings: Settings, clock: Clock, name: str, changes: Mapping[str, Any]
) -> Operation[Schedule]:
    wanted = normalize_fields(changes, partial=True)
    for key in REQUIRED:
        if key in wanted and wanted[key] is None:
            raise ValidationError(f"schedule field '{key}' cannot be empty", field=key)
    rows = yield Statement(query("schedule_lock"), {"name": name, "now": clock.sql_now()})
    row = rows[0]
    if row["id"] is None:
        raise NotFound(f"no schedule named {name!r}")
    now = row["clock_now"]
    current = Schedule.from_row(row)
    merged = {**_definition_of(current), **wanted}
    definition = build_definition(settings, merged)
    timing_changed = (
        definition.cron_expression != current.cron_expression
        or definition.timezone != current.timezone
        or (definition.enabled and not current.enabled)
        or (definition.enabled and current.next_run_at is None)
    )
    if not definition.enabled:
        next_run_at = None
    elif timing_changed:
        next_run_at = definition.cron().next_fire(now)
    else:
        next_run_at = current.next_run_at
    params = {**definition.params(), "id": current.id, "now": now, "next_run_at": next_run_at}
    try:
        rows = yield Statement(query("schedule_update"), params)
    except psycopg.errors.UniqueViolation:
        raise Conflict(f"a schedule named {definition.name!r} already exists") from None
    return Schedule.from_row(rows[0])


def _delete_op(name: str) -> Operation[Schedule]:
    rows = yield Statement(query("schedule_delete"), {"name": name})
    if not rows:
        raise NotFound(f"no schedule named {name!r}")
    return Schedule.from_row(rows[0])


# ---------------------------------------------------------------- execution


async def _run_async(conn: psycopg.AsyncConnection[Any], op: Operation[T]) -> T:
    async with conn.transaction():
        return await run_async(conn, op)


def _run_sync(conn: psycopg.Connection[Any], op: Operation[T]) -> T:
    with conn.transaction():
        return run_sync(conn, op)


# ---------------------------------------------------------------- public API


async def list_schedules(conn: psycopg.AsyncConnection[Any]) -> list[Schedule]:
    """Every schedule, by name."""
    return await _run_async(conn, _list_op())


async def get_schedule(
    conn: psycopg.AsyncConnection[Any], name: str, *, upcoming: int = 0
) -> Schedule:
    """The schedule called `name` (NotFound if none), with its next `upcoming` fires."""
    return await _run_async(conn, _get_op(name, upcoming))


async def create_schedule(
    conn: psycopg.AsyncConnection[Any], settings: Settings, clock: Clock, fields: Mapping[str, Any]
) -> Schedule:
    """Store a new schedule. `fields`: name, type, cron (required); payload, queue,
    timezone, description, misfire, max_catch_up, priority, enabled, options."""
    return await _run_async(conn, _create_op(settings, clock, fields))


async def update_schedule(
    conn: psycopg.AsyncConnection[Any],
    settings: Settings,
    clock: Clock,
    name: str,
    changes: Mapping[str, Any],
) -> Schedule:
    """Change any fields of schedule `name` (the same fields as create, name included)."""
    return await _run_async(conn, _update_op(settings, clock, name, changes))


async def upsert_schedule(
    conn: psycopg.AsyncConnection[Any], settings: Settings, clock: Clock, fields: Mapping[str, Any]
) -> Schedule:
    """Create the schedule, or redefine the one with that name (for definitions kept
    in code and applied at every start)."""
    try:
        return await create_schedule(conn, settings, clock, fields)
    except Conflict:
        return await update_schedule(conn, settings, clock, fields["name"], fields)


async def set_enabled(
    conn: psycopg.AsyncConnection[Any], settings: Settings, clock: Clock, name: str, enabled: bool
) -> Schedule:
    """Enable (next_run_at from now on) or disable (next_run_at cleared) a schedule."""
    return await _run_async(conn, _update_op(settings, clock, name, {"enabled": enabled}))


async def delete_schedule(conn: psycopg.AsyncConnection[Any], name: str) -> Schedule:
    """Delete schedule `name` and return it as it was."""
    return await _run_async(conn, _delete_op(name))


def list_schedules_sync(conn: psycopg.Connection[Any]) -> list[Schedule]:
    return _run_sync(conn, _list_op())


def get_schedule_sync(conn: psycopg.Connection[Any], name: str, *, upcoming: int = 0) -> Schedule:
    return _run_sync(conn, _get_op(name, upcoming))


def create_schedule_sync(
    conn: psycopg.Connection[Any], settings: Settings, clock: Clock, fields: Mapping[str, Any]
) -> Schedule:
    return _run_sync(conn, _create_op(settings, clock, fields))


def update_schedule_sync(
    conn: psycopg.Connection[Any],
    settings: Settings,
    clock: Clock,
    name: str,
    changes: Mapping[str, Any],
) -> Schedule:
    return _run_sync(conn, _update_op(settings, clock, name, changes))


def upsert_schedule_sync(
    conn: psycopg.Connection[Any], settings: Settings, clock: Clock, fields: Mapping[str, Any]
) -> Schedule:
    try:
        return create_schedule_sync(conn, settings, clock, fields)
    except Conflict:
        return update_schedule_sync(conn, settings, clock, fields["name"], fields)


def set_enabled_sync(
    conn: psycopg.Connection[Any], settings: Settings, clock: Clock, name: str, enabled: bool
) -> Schedule:
    return _run_sync(conn, _update_op(settings, clock, name, {"enabled": enabled}))


def delete_schedule_sync(conn: psycopg.Connection[Any], name: str) -> Schedule:
    return _run_sync(conn, _delete_op(name))
