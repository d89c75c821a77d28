"""docs/coming-from-bullmq.md tells plugin users what to run instead: every pgjobs
command it names must parse with the options it shows, and every query must run."""

from __future__ import annotations

import re
import shlex
from typing import Any

import click
import psycopg
import pytest

from pgjobs.cli import main
from tests.paths import ROOT

PAGE = (ROOT / "docs" / "coming-from-bullmq.md").read_text()
SPANS = re.findall(r"`([^`]+)`", PAGE)
# Placeholders the page writes in capitals, with a value of the right kind.
SAMPLES = {
    "QUEUE": "default",
    "ID": "0190a000-0000-7000-8000-000000000000",
    "N": "10",
    "MS": "1000",
    "FILE": "weekly.dump",
    "URL": "postgresql://localhost/restored",
}


def runnable_commands() -> list[str]:
    """The page's `pgjobs ...` spans that are one concrete command line (spans with
    alternatives, optional parts or ellipses describe several and are skipped)."""
    commands = [s for s in SPANS if s.startswith("pgjobs ")]
    return [c for c in commands if not re.search(r"[\[\]|…<>]", c)]


def parse(command: str) -> click.Context:
    """Resolve `command` down to its leaf command and parse its arguments and options
    the way a run would, without running it."""
    words = [SAMPLES.get(w, w) for w in shlex.split(command)[1:]]
    ctx = click.Context(main, info_name="pgjobs")
    leaf: click.Command = main
    while isinstance(leaf, click.Group):
        name, words = words[0], words[1:]
        sub = leaf.get_command(ctx, name)
        assert sub is not None, f"pgjobs has no command {name!r}"
        ctx = click.Context(sub, info_name=name, parent=ctx)
        leaf = sub
    return leaf.make_context(ctx.info_name, words, parent=ctx.parent)


def test_the_page_names_the_commands_a_plugin_user_needs() -> None:
    commands = runnable_commands()
    names = {shlex.split(c)[1] for c in commands}
    assert {"init", "server", "stats", "retry", "workers", "pause", "cancel"} <= names


@pytest.mark.parametrize("command", runnable_commands())
def test_every_command_on_the_page_parses(command: str) -> None:
    ctx = parse(command)
    assert ctx.command is not main


def test_a_command_the_cli_does_not_have_fails_to_parse() -> None:
    with pytest.raises(click.UsageError):
        parse("pgjobs stats --no-such-option")
    with pytest.raises(click.BadParameter):
        parse("pgjobs worker -c many")


@pytest.mark.parametrize("query", [s for s in SPANS if s.startswith("SELECT ")])
def test_every_query_on_the_page_runs(db: psycopg.Connection[Any], query: str) -> None:
    db.execute("SELECT pgjobs_enqueue('send-email', '{\"to\": \"a@example.com\"}')")
    rows = db.execute(query).fetchall()
    assert rows, f"{query} returned nothing for a queue with a waiting job"
