"""`pgjobs bench`: measure enqueue, drain and latency as a user gets them, on a scratch
database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from pgjobs.cli.common import handle_errors, settings_from
from pgjobs.cli.output import echo


def register(group: click.Group) -> None:
    @group.command()
    @click.option("--quick", is_flag=True, help="A ~15-second smoke run with small counts.")
    @click.option(
        "--output",
        type=click.Path(path_type=Path),
        default=Path("bench-results"),
        show_default=True,
        help="Folder for the JSON report.",
    )
    @click.option(
        "--large-table",
        type=click.IntRange(0),
        default=0,
        metavar="N",
        help=(
            "Also drain with N finished jobs in the table (e.g. 1000000), three times, "
            "alternating with drains of an empty table."
        ),
    )
    @click.option(
        "--memory-jobs",
        type=click.IntRange(0),
        default=0,
        metavar="N",
        help="Also track a worker's RSS over N processed jobs (e.g. 1000000).",
    )
    @click.pass_context
    def bench(
        ctx: click.Context, quick: bool, output: Path, large_table: int, memory_jobs: int
    ) -> None:
        """Measure what a user gets (public API, default settings, wall clock) next to
        the limit PostgreSQL sets for the same statements, on a scratch database it
        creates (next to DATABASE_URL's) and drops."""
        # Function-level: development tooling (pgjobs.dev) loads only for its commands.
        from pgjobs.dev.bench import run, save

        settings = settings_from(ctx)

        @handle_errors
        def start() -> None:
            report = asyncio.run(run(settings, quick, large_table, memory_jobs))
            echo(f"results written to {save(report, output)}")

        start()
