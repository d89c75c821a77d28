"""The `pgjobs` command line: thin click commands over the library.

Errors a user can fix (bad input, unreachable services, bad settings) print one line
`error: ...` and exit with status 2; nothing else is written when a command fails.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click

from pgjobs._version import __version__
from pgjobs.cli.output import echo, one_line
from pgjobs.config import Settings, load_settings
from pgjobs.errors import PgJobsError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> NoReturn:
    echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Turn pgjobs errors into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PgJobsError as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


def settings_from(ctx: click.Context) -> Settings:
    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings()
        except PgJobsError as exc:
            fail(str(exc))
    settings: Settings = obj["settings"]
    return settings


def print_json(value: Any) -> None:
    echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def parse_json_option(value: str, name: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        fail(f"{name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except RecursionError:
        fail(f"{name} is nested too deeply")
    except ValueError as exc:  # an integer beyond Python's digit limit
        fail(f"{name} is not valid JSON: {str(exc).split(';')[0][:120]}")


class OneLineErrors(click.Group):
    """The command group. Its usage errors (a bad option value, a missing argument, an
    unknown command) print one `error: ...` line, like every other error, instead of
    click's usage block; the exit status stays click's (2 for usage errors)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            fail(" ".join(exc.format_message().split()), exc.exit_code)
        except click.Abort:
            echo("Aborted!", err=True)
            sys.exit(1)
        # Without standalone mode click returns the exit code of ctx.exit(), or the
        # command's return value (None for every pgjobs command).
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pgjobs")
def main() -> None:
    """pgjobs — background jobs whose queue is a PostgreSQL table.

    Settings come from the environment and a .env file (see .env.example).
    """


@main.command()
@click.option(
    "--producer-types",
    default=None,
    help="Comma-separated job types the SQL API may create (replaces the allowlist); "
    "'default' for every type except custom, database-backup and file-cleanup.",
)
@click.pass_context
@handle_errors
def init(ctx: click.Context, producer_types: str | None) -> None:
    """Check PostgreSQL (and Redis if JOBS_REDIS_URL is set), then create or upgrade
    the schema, views and the default queues. Safe to run again, and concurrently."""
    from pgjobs.install import initialise

    wanted = None if producer_types is None else _type_list(producer_types)
    report = initialise(settings_from(ctx))
    for line in report.lines():
        echo(line)
    if not report.ok:
        sys.exit(1)
    if wanted is not None:
        from pgjobs.cli.producers import apply_producer_types

        apply_producer_types(settings_from(ctx), None if wanted == ["default"] else wanted)


def _type_list(value: str) -> list[str]:
    from pgjobs.producer.options import validate_type

    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        fail("--producer-types needs at least one job type, or 'default'")
    for name in names:
        validate_type(name)
    return names


@main.command()
@click.argument("type")
@click.option("--payload", default="{}", show_default=True, help="Job payload as a JSON object.")
@click.option("--queue", default="default", show_default=True)
@click.option("--priority", default=None, help="critical, high, normal, low or an integer.")
@click.option("--delay", type=int, default=None, help="Delay in milliseconds.")
@click.option(
    "--attempts", type=int, default=None, help="Total tries (default JOBS_RETRY_ATTEMPTS)."
)
@click.option("--timeout", type=int, default=None, help="Per-run timeout in milliseconds.")
@click.pass_context
@handle_errors
def enqueue(
    ctx: click.Context,
    type: str,
    payload: str,
    queue: str,
    priority: str | None,
    delay: int | None,
    attempts: int | None,
    timeout: int | None,
) -> None:
    """Create a job of TYPE and print its id."""
    from pgjobs.app import App

    app = App(settings_from(ctx))
    try:
        job = app.create_sync(
            type,
            parse_json_option(payload, "--payload"),
            queue=queue,
            priority=priority,
            delay=delay,
            attempts=attempts,
            timeout=timeout,
        )
    finally:
        app.close_sync()
    echo(str(job.id))


@main.command()
@click.argument("job_id")
@click.pass_context
@handle_errors
def get(ctx: click.Context, job_id: str) -> None:
    """Print a job, its results and its failures as JSON."""
    from pgjobs.app import App

    app = App(settings_from(ctx))
    try:
        job = app.get_sync(job_id)
    finally:
        app.close_sync()
    print_json(job.to_dict())


def _attach_commands() -> None:
    """Commands grouped by concern live in their own modules beside this one."""
    from pgjobs.cli import backup, bench, dev, ops, producers, queues, schedules, worker

    for module in (worker, ops, schedules, dev, backup, bench, queues, producers):
        module.register(main)


_attach_commands()
