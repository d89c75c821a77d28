"""What every command module shares: the one-line error exit, settings from the click
context, JSON output and option parsing."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

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
