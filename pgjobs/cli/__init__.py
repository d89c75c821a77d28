"""The `pgjobs` command line: thin click commands over the library.

Errors a user can fix (bad input, unreachable services, bad settings) print one line
`error: ...` and exit with status 2; nothing else is written when a command fails.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from pgjobs._version import __version__
from pgjobs.app import App
from pgjobs.cli import backup, bench, dev, ops, producers, queues, schedules, worker
from pgjobs.cli.common import fail, handle_errors, parse_json_option, print_json, settings_from
from pgjobs.cli.output import echo
from pgjobs.install import initialise
from pgjobs.producer.options import validate_type


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
    wanted = None if producer_types is None else _type_list(producer_types)
    report = initialise(settings_from(ctx))
    for line in report.lines():
        echo(line)
    if not report.ok:
        sys.exit(1)
    if wanted is not None:
        producers.apply_producer_types(
            settings_from(ctx), None if wanted == ["default"] else wanted
        )


def _type_list(value: str) -> list[str]:
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
    app = App(settings_from(ctx))
    try:
        job = app.get_sync(job_id)
    finally:
        app.close_sync()
    print_json(job.to_dict())


# Commands grouped by concern live in their own modules beside this one.
for _module in (worker, ops, schedules, dev, backup, bench, queues, producers):
    _module.register(main)
