"""`pgjobs worker`: run worker processes."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import signal
import sys
import threading
import time
from typing import Any

import click

from pgjobs.app import App
from pgjobs.cli.common import handle_errors, settings_from
from pgjobs.cli.logs import PipeHandler, install, log_options, log_target, start_logging
from pgjobs.cli.supervisor import supervise
from pgjobs.config import Settings
from pgjobs.producer.options import validate_queue


def load_app(spec: str | None, settings: Settings) -> Any:
    """`package.module:attribute` -> the App it names (a plain App when None)."""
    if not spec:
        return App(settings)
    module_name, _, attribute = spec.partition(":")
    # A dotted module path and a plain name: anything else (a file path, a relative
    # import) would fail deep inside importlib with a traceback.
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module_name) or not (
        attribute.isidentifier()
    ):
        raise click.UsageError(f"--app must look like package.module:app (got {spec!r})")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import {module_name!r} for --app: {exc}") from None
    app = getattr(module, attribute, None)
    if callable(app) and not isinstance(app, App):
        app = app()  # a factory: lets a module define handlers without import-time work
    if not isinstance(app, App):
        raise click.UsageError(f"{spec!r} is not a pgjobs.App")
    # The process's settings (environment, .env, flags) win over import-time ones.
    app.settings = settings
    return app


async def serve(
    app: Any,
    queues: list[str],
    concurrency: int,
    grace: float,
    maintenance: bool,
    *,
    supervised: bool = False,
) -> None:
    """Run one worker until SIGTERM/SIGINT; a second signal exits at once.

    Under a supervisor (`--processes N`) the second signal is the supervisor's to act
    on: a Ctrl-C reaches every process of the terminal's group, and systemd signals
    every process of the service, so a child sees each stop twice, once directly and
    once forwarded. It stops on the first and ignores the rest; the supervisor kills it
    on a second stop of its own."""
    worker = app.worker(queues, concurrency, grace=grace, maintenance=maintenance)
    loop = asyncio.get_running_loop()
    signals_seen = 0
    stopping: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            if supervised:
                return
            logging.getLogger("pgjobs.worker").warning("second signal: exiting now")
            os._exit(1)
        logging.getLogger("pgjobs.worker").info("stopping: finishing running jobs")
        stopping.append(loop.create_task(worker.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await worker.run()
    await app.close()


def exit_past_abandoned_threads(settle: float = 0.5) -> None:
    """Leave even if a timed-out sync handler is still running in its thread.

    A thread cannot be killed, and Python waits for every pool thread at exit: a handler
    stuck in a sleep or a loop would keep a stopped worker alive for as long as it
    hangs. By now every outcome is recorded and the worker has deregistered, so the
    process exits without waiting for such threads (idle ones get `settle` s to end)."""
    deadline = time.monotonic() + settle
    stuck = []
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            stuck.append(thread.name)
    if stuck:
        logging.getLogger("pgjobs.worker").warning(
            "exiting with %d abandoned handler threads still running (%s)",
            len(stuck),
            ", ".join(sorted(set(stuck))),
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def register(group: click.Group) -> None:
    @group.command()
    @click.argument("queues", nargs=-1)
    @click.option(
        "--app",
        "app_spec",
        default=None,
        envvar="JOBS_APP",
        help="Handlers to load, as package.module:app (default JOBS_APP).",
    )
    @click.option(
        "--concurrency",
        "-c",
        type=click.IntRange(1, 10_000),
        default=None,
        help="Jobs in flight per process (default JOBS_DEFAULT_CONCURRENCY).",
    )
    @click.option(
        "--processes",
        "-p",
        type=click.IntRange(1, 256),
        default=1,
        show_default=True,
        help="Worker processes, restarted if they crash.",
    )
    @click.option(
        "--grace",
        type=click.FloatRange(0),
        default=None,
        help="Seconds to let running jobs finish on shutdown (default JOBS_SHUTDOWN_GRACE).",
    )
    @click.option(
        "--no-maintenance",
        is_flag=True,
        help="Do not take part in staging, rescue, pruning and cron.",
    )
    @log_options
    # Set by the supervisor of --processes N: where this child sends its log records.
    @click.option("--log-pipe", type=int, default=None, hidden=True)
    @click.pass_context
    def worker(
        ctx: click.Context,
        queues: tuple[str, ...],
        app_spec: str | None,
        concurrency: int | None,
        processes: int,
        grace: float | None,
        no_maintenance: bool,
        log_file: str | None,
        log_format: str | None,
        log_pipe: int | None,
    ) -> None:
        """Process jobs from QUEUES (default: default) until SIGTERM/SIGINT.

        The first signal stops claiming and lets running jobs finish for the grace
        period; unfinished ones go back to the queue. A second signal exits at once.
        """
        settings = settings_from(ctx)
        if log_pipe is not None:
            target = log_target(settings, log_file, log_format)
            install(PipeHandler(log_pipe, target.format), target.level)
        else:
            target = start_logging(settings, log_file, log_format)

        @handle_errors
        def start() -> None:
            names = [validate_queue(q) for q in queues] or ["default"]
            # Loaded before the supervisor forks its workers, which then start at once.
            app = load_app(app_spec, settings)
            grace_s = settings.shutdown_grace_ms / 1000 if grace is None else grace
            supervised = processes > 1 or log_pipe is not None

            def run() -> None:
                asyncio.run(
                    serve(
                        app,
                        names,
                        concurrency or settings.default_concurrency,
                        grace_s,
                        not no_maintenance,
                        supervised=supervised,
                    )
                )
                exit_past_abandoned_threads()

            if processes > 1:
                sys.exit(supervise(handle_errors(run), processes, target, sys.argv[1:]))
            run()

        start()
