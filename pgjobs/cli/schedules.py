"""`pgjobs schedule list|show|create|update|enable|disable|run|delete`: recurring jobs.

Each command runs one operation of pgjobs.ops (which records every change in the audit
trail as `cli:<user>`) and prints an aligned table or key/value lines for people,
`--json` for programs. Bad input (an invalid expression, an unknown timezone or
schedule, a payload that is not JSON) prints one line `error: ...` and exits 2; nothing
is changed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

import click

from pgjobs.cli.common import fail, handle_errors, parse_json_option, print_json, settings_from
from pgjobs.cli.ops import actor, run_ops
from pgjobs.cli.output import echo
from pgjobs.cli.tables import table
from pgjobs.replica import primary_reads
from pgjobs.schedules.store import Schedule, schedule_fields

if TYPE_CHECKING:
    from pgjobs.ops import Ops

T = TypeVar("T")
UPCOMING = 5

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")


def run(ctx: click.Context, action: Callable[[Ops], Awaitable[T]]) -> T:
    return run_ops(settings_from(ctx), action)


def when(value: datetime | None, zone: str) -> str:
    """A fire time in the schedule's own timezone, with its offset."""
    if value is None:
        return "-"
    with suppress(ValueError, KeyError):
        value = value.astimezone(ZoneInfo(zone))
    return value.isoformat(sep=" ")


def describe(schedule: Schedule) -> str:
    rows: list[tuple[str, object]] = [
        ("name", schedule.name),
        ("type", schedule.type),
        ("queue", schedule.queue),
        ("cron", schedule.cron_expression),
        ("timezone", schedule.timezone),
        ("enabled", "yes" if schedule.enabled else "no"),
        ("description", schedule.description or "-"),
        ("payload", schedule.to_dict()["payload"]),
        ("priority", schedule.priority),
        ("misfire", schedule.misfire_policy),
        ("max catch-up", schedule.max_catch_up),
        ("job options", schedule.options or "-"),
        ("last run", when(schedule.last_run_at, schedule.timezone)),
        ("next run", when(schedule.next_run_at, schedule.timezone)),
        ("created", when(schedule.created_at, schedule.timezone)),
        ("updated", when(schedule.updated_at, schedule.timezone)),
    ]
    width = max(len(key) for key, _ in rows)
    lines = [
        f"{key.ljust(width)}  {json.dumps(value) if isinstance(value, dict) else value}"
        for key, value in rows
    ]
    for index, at in enumerate(schedule.upcoming):
        label = "upcoming" if index == 0 else ""
        lines.append(f"{label.ljust(width)}  {when(at, schedule.timezone)}")
    return "\n".join(lines)


def output(schedule: Schedule, as_json: bool, message: str) -> None:
    if as_json:
        print_json(schedule.to_dict())
    else:
        echo(message)


def job_options(attempts: int | None, timeout: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if attempts is not None:
        options["attempts"] = attempts
    if timeout is not None:
        options["timeout"] = timeout
    return options


def register(group: click.Group) -> None:
    """Add the `schedule` command group to `group`."""

    @group.group("schedule")
    def schedule() -> None:
        """Recurring jobs fired by cron expressions (exactly once per fire)."""

    @schedule.command("list")
    @json_option
    @click.pass_context
    @handle_errors
    def list_(ctx: click.Context, as_json: bool) -> None:
        """List every schedule with its next and last run."""
        with primary_reads():  # shows a schedule the previous command made
            schedules = run(ctx, lambda ops: ops.schedules())
        if as_json:
            print_json([s.to_dict() for s in schedules])
            return
        if not schedules:
            echo("no schedules (create one with `pgjobs schedule create`)")
            return
        echo(
            table(
                ["NAME", "TYPE", "QUEUE", "CRON", "TIMEZONE", "ENABLED", "NEXT RUN", "LAST RUN"],
                [
                    [
                        s.name,
                        s.type,
                        s.queue,
                        s.cron_expression,
                        s.timezone,
                        s.enabled,
                        when(s.next_run_at, s.timezone),
                        when(s.last_run_at, s.timezone),
                    ]
                    for s in schedules
                ],
            )
        )

    @schedule.command()
    @click.argument("name")
    @json_option
    @click.pass_context
    @handle_errors
    def show(ctx: click.Context, name: str, as_json: bool) -> None:
        """Show schedule NAME and its next fires."""
        found = run(ctx, lambda ops: ops.schedule(name, upcoming=UPCOMING))
        if as_json:
            print_json(found.to_dict())
        else:
            echo(describe(found))

    @schedule.command()
    @click.argument("given", nargs=-1, metavar="[NAME TYPE CRON [PAYLOAD]]")
    @click.option("--name", default=None, help="Unique name of the schedule.")
    @click.option("--type", "type_", default=None, help="Job type each fire enqueues.")
    @click.option(
        "--cron",
        default=None,
        help="minute hour day-of-month month day-of-week [second], or @hourly, @daily, ...",
    )
    @click.option("--payload", default=None, help="Job payload (JSON object; default {}).")
    @click.option("--queue", default="default", show_default=True)
    @click.option("--tz", default="UTC", show_default=True, help="IANA timezone of the cron.")
    @click.option("--desc", default=None, help="Description.")
    @click.option(
        "--misfire",
        default="skip",
        show_default=True,
        help="Fires missed while no worker ran: skip, run_once or catch_up.",
    )
    @click.option("--max-catch-up", type=int, default=100, show_default=True)
    @click.option("--priority", default=None, help="critical, high, normal, low or an integer.")
    @click.option("--attempts", type=int, default=None, help="Total tries of each job.")
    @click.option("--timeout", type=int, default=None, help="Per-run timeout in milliseconds.")
    @click.option("--disabled", is_flag=True, help="Store it disabled.")
    @click.option("--replace", is_flag=True, help="Redefine the schedule if the name exists.")
    @json_option
    @click.pass_context
    @handle_errors
    def create(
        ctx: click.Context,
        given: tuple[str, ...],
        name: str | None,
        type_: str | None,
        cron: str | None,
        payload: str | None,
        queue: str,
        tz: str,
        desc: str | None,
        misfire: str,
        max_catch_up: int,
        priority: str | None,
        attempts: int | None,
        timeout: int | None,
        disabled: bool,
        replace: bool,
        as_json: bool,
    ) -> None:
        """Create a schedule that enqueues a TYPE job at every fire of CRON.

        NAME, TYPE, CRON and PAYLOAD may be given in this order as arguments, or as the
        options of the same names."""
        payload_label = "--payload" if payload is not None else "PAYLOAD"
        name, type_, cron, payload = create_arguments(given, name, type_, cron, payload)
        fields = schedule_fields(
            name,
            type_,
            cron,
            parse_json_option(payload, payload_label),
            queue=queue,
            timezone=tz,
            description=desc,
            misfire=misfire,
            max_catch_up=max_catch_up,
            priority=priority,
            enabled=not disabled,
            options=job_options(attempts, timeout),
        )
        created = run(ctx, lambda ops: ops.create_schedule(fields, replace=replace, actor=actor()))
        output(
            created,
            as_json,
            f"created schedule {created.name!r}; next run "
            f"{when(created.next_run_at, created.timezone)}",
        )

    @schedule.command()
    @click.argument("name")
    @click.option("--rename", default=None, help="New name.")
    @click.option("--type", "type_", default=None, help="Job type each fire enqueues.")
    @click.option("--cron", default=None)
    @click.option("--payload", default=None, help="Job payload (JSON object).")
    @click.option("--queue", default=None)
    @click.option("--tz", default=None, help="IANA timezone of the cron.")
    @click.option("--desc", default=None, help="Description.")
    @click.option("--misfire", default=None, help="skip, run_once or catch_up.")
    @click.option("--max-catch-up", type=int, default=None)
    @click.option("--priority", default=None, help="critical, high, normal, low or an integer.")
    @json_option
    @click.pass_context
    @handle_errors
    def update(
        ctx: click.Context,
        name: str,
        rename: str | None,
        type_: str | None,
        cron: str | None,
        payload: str | None,
        queue: str | None,
        tz: str | None,
        desc: str | None,
        misfire: str | None,
        max_catch_up: int | None,
        priority: str | None,
        as_json: bool,
    ) -> None:
        """Change fields of schedule NAME; a new cron or timezone applies from now."""
        given = {
            "name": rename,
            "type": type_,
            "cron": cron,
            "payload": None if payload is None else parse_json_option(payload, "--payload"),
            "queue": queue,
            "timezone": tz,
            "description": desc,
            "misfire": misfire,
            "max_catch_up": max_catch_up,
            "priority": priority,
        }
        changes = {key: value for key, value in given.items() if value is not None}
        if not changes:
            fail("nothing to change: give at least one option (see --help)")
        updated = run(ctx, lambda ops: ops.update_schedule(name, changes, actor=actor()))
        output(
            updated,
            as_json,
            f"updated schedule {updated.name!r}; next run "
            f"{when(updated.next_run_at, updated.timezone)}",
        )

    @schedule.command()
    @click.argument("name")
    @json_option
    @click.pass_context
    @handle_errors
    def enable(ctx: click.Context, name: str, as_json: bool) -> None:
        """Enable schedule NAME; it fires from its next slot on."""
        found = run(ctx, lambda ops: ops.update_schedule(name, {"enabled": True}, actor=actor()))
        output(
            found,
            as_json,
            f"enabled schedule {found.name!r}; next run {when(found.next_run_at, found.timezone)}",
        )

    @schedule.command()
    @click.argument("name")
    @json_option
    @click.pass_context
    @handle_errors
    def disable(ctx: click.Context, name: str, as_json: bool) -> None:
        """Disable schedule NAME; it keeps its definition but does not fire."""
        found = run(ctx, lambda ops: ops.update_schedule(name, {"enabled": False}, actor=actor()))
        output(found, as_json, f"disabled schedule {found.name!r}")

    @schedule.command("run")
    @click.argument("name")
    @json_option
    @click.pass_context
    @handle_errors
    def run_now(ctx: click.Context, name: str, as_json: bool) -> None:
        """Enqueue schedule NAME's job now, once; its next run stays as it was."""
        job = run(ctx, lambda ops: ops.run_schedule_now(name, actor=actor()))
        if as_json:
            print_json(job.to_dict())
        else:
            echo(f"enqueued job {job.id} ({job.type} on {job.queue}) from schedule {name!r}")

    @schedule.command()
    @click.argument("name")
    @json_option
    @click.pass_context
    @handle_errors
    def delete(ctx: click.Context, name: str, as_json: bool) -> None:
        """Delete schedule NAME (jobs it already enqueued stay)."""
        found = run(ctx, lambda ops: ops.delete_schedule(name, actor=actor()))
        output(found, as_json, f"deleted schedule {found.name!r}")


def create_arguments(
    given: tuple[str, ...],
    name: str | None,
    type_: str | None,
    cron: str | None,
    payload: str | None,
) -> tuple[str, str, str, str]:
    """`schedule create`'s fields from its arguments (`NAME TYPE CRON [PAYLOAD]`) and
    options; each one given once, one way or the other."""
    if len(given) > 4:
        raise click.UsageError("schedule create takes at most NAME TYPE CRON PAYLOAD")
    options = {"--name": name, "--type": type_, "--cron": cron, "--payload": payload}
    for (option, value), argument in zip(options.items(), given, strict=False):
        if value is not None:
            raise click.UsageError(f"{option} given twice: as an argument and as an option")
        options[option] = argument
    for option, label in (("--name", "NAME"), ("--type", "TYPE"), ("--cron", "CRON")):
        if options[option] is None:
            raise click.UsageError(f"missing {label} (or {option})")
    return (
        str(options["--name"]),
        str(options["--type"]),
        str(options["--cron"]),
        options["--payload"] or "{}",
    )
