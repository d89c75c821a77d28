"""`pgjobs producer-types ...`: the job types the SQL API may create.

pgjobs producer-types list            the allowlist (or the default rule)
pgjobs producer-types set TYPE...     allow exactly these types
pgjobs producer-types reset           back to the default: all but the operator types
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from pgjobs.cli.common import handle_errors, print_json, settings_from
from pgjobs.cli.ops import actor, json_option, run_ops
from pgjobs.config import Settings
from pgjobs.db import connect_sync
from pgjobs.sql_api import OPERATOR_TYPES, producer_types


def register(group: click.Group) -> None:
    group.add_command(producer_types_group)


@click.group("producer-types")
def producer_types_group() -> None:
    """Which job types pgjobs_enqueue and pgjobs_enqueue_many (the SQL API, e.g. the
    pgjobs_producer role) may create. The default allows every type except the
    operator types custom, database-backup and file-cleanup."""


def _show(types: list[str] | None, as_json: bool) -> None:
    if as_json:
        print_json({"types": types, "default": types is None, "excluded": OPERATOR_TYPES})
    elif types is None:
        click.echo(f"default: every job type except {', '.join(OPERATOR_TYPES)}")
    elif not types:
        click.echo("none: the SQL API may create no job")
    else:
        for name in types:
            click.echo(name)


@producer_types_group.command("list")
@json_option
@click.pass_context
@handle_errors
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Print the allowed types, one a line, or the default rule."""
    settings = settings_from(ctx)
    with connect_sync(
        settings.require_database_url(), "cli", pooled=settings.transaction_pooling
    ) as conn:
        _show(producer_types(conn), as_json)


def _replace(settings: Settings, types: Sequence[str] | None) -> list[str] | None:
    """Replace the allowlist (None = the default rule), recorded in the audit trail."""
    return run_ops(settings, lambda ops: ops.set_producer_types(types, actor=actor()))


def apply_producer_types(settings: Settings, types: Sequence[str] | None) -> None:
    """Replace the allowlist (None = the default rule) and print the result."""
    _show(_replace(settings, types), as_json=False)


@producer_types_group.command("set")
@click.argument("types", nargs=-1, required=True)
@json_option
@click.pass_context
@handle_errors
def set_command(ctx: click.Context, types: Sequence[str], as_json: bool) -> None:
    """Allow exactly TYPES (replacing the default rule). Operator types are allowed only
    when named here."""
    _show(_replace(settings_from(ctx), types), as_json)


@producer_types_group.command("reset")
@json_option
@click.pass_context
@handle_errors
def reset_command(ctx: click.Context, as_json: bool) -> None:
    """Back to the default: every type except the operator types."""
    _show(_replace(settings_from(ctx), None), as_json)
