"""`pgjobs queue ...`: rate limits of queues and of rate-limit keys.

pgjobs queue limit QUEUE --max N --duration MS     at most N starts per MS
pgjobs queue limit QUEUE --clear
pgjobs queue key-limit PATTERN --max N --duration MS
pgjobs queue key-limit PATTERN --clear
pgjobs queue limits                                 every limit
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from pgjobs.cli.common import fail, handle_errors, print_json, settings_from
from pgjobs.cli.ops import actor, json_option, run_ops
from pgjobs.cli.output import echo
from pgjobs.cli.tables import table

if TYPE_CHECKING:
    from pgjobs.limits import KeyLimit, QueueLimit
    from pgjobs.ops import Ops


def register(group: click.Group) -> None:
    group.add_command(queue)


@click.group()
def queue() -> None:
    """Queue settings: rate limits per queue and per rate-limit key."""


def _limit_args(max_jobs: str | None, duration: str | None, clear: bool) -> None:
    if clear and (max_jobs is not None or duration is not None):
        fail("--clear cannot be combined with --max or --duration")
    if not clear and (max_jobs is None or duration is None):
        fail("give --max N and --duration MS, or --clear")


def _line(what: str, limit: Any) -> str:
    if limit is None:
        return f"{what}: no rate limit"
    return f"{what}: {limit.describe()}"


@queue.command("limit")
@click.argument("name")
@click.option("--max", "max_jobs", default=None, help="Most jobs started per window.")
@click.option("--duration", default=None, help="Window length in milliseconds.")
@click.option("--clear", is_flag=True, help="Remove the queue's limit.")
@json_option
@click.pass_context
@handle_errors
def limit_command(
    ctx: click.Context,
    name: str,
    max_jobs: str | None,
    duration: str | None,
    clear: bool,
    as_json: bool,
) -> None:
    """Limit queue NAME to at most --max job starts per --duration ms, across all
    workers (the spec's limiter {max, duration})."""
    _limit_args(max_jobs, duration, clear)

    async def action(ops: Ops) -> QueueLimit:
        if clear:
            return await ops.clear_queue_limit(name, actor=actor())
        return await ops.set_queue_limit(name, max_jobs, duration, actor=actor())

    result = run_ops(settings_from(ctx), action)
    if as_json:
        print_json(result.to_dict())
    else:
        echo(_line(f"queue {result.queue}", result.limit))


@queue.command("key-limit")
@click.argument("pattern")
@click.option("--max", "max_jobs", default=None, help="Most jobs started per window, per key.")
@click.option("--duration", default=None, help="Window length in milliseconds.")
@click.option("--clear", is_flag=True, help="Remove the limit of this pattern.")
@json_option
@click.pass_context
@handle_errors
def key_limit_command(
    ctx: click.Context,
    pattern: str,
    max_jobs: str | None,
    duration: str | None,
    clear: bool,
    as_json: bool,
) -> None:
    """Limit jobs whose rateLimitKey matches PATTERN to at most --max starts per
    --duration ms, each key on its own (`tenant:*` gives every tenant that budget).
    `*` matches any characters and `?` one; an exact pattern wins over a glob."""
    _limit_args(max_jobs, duration, clear)

    async def action(ops: Ops) -> KeyLimit:
        if clear:
            return await ops.clear_key_limit(pattern, actor=actor())
        return await ops.set_key_limit(pattern, max_jobs, duration, actor=actor())

    result = run_ops(settings_from(ctx), action)
    if as_json:
        print_json(result.to_dict() if not clear else {"pattern": result.pattern, "cleared": True})
    elif clear:
        echo(f"keys {result.pattern}: no rate limit")
    else:
        echo(_line(f"keys {result.pattern}", result.limit))


@queue.command("limits")
@json_option
@click.pass_context
@handle_errors
def limits_command(ctx: click.Context, as_json: bool) -> None:
    """Every rate limit: queues, then key patterns."""
    result = run_ops(settings_from(ctx), lambda ops: ops.limits())
    if as_json:
        print_json(result.to_dict())
        return
    rows: list[list[object]] = [
        ["queue", q.queue, q.limit.max_jobs, q.limit.duration_ms] for q in result.queues if q.limit
    ]
    rows += [["key", k.pattern, k.limit.max_jobs, k.limit.duration_ms] for k in result.keys]
    if not rows:
        echo("no rate limits")
        return
    echo(table(["kind", "name", "max", "duration_ms"], rows))
