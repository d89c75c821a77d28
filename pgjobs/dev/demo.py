"""`pgjobs demo`: the whole system on one machine, started and stopped with one command.

Finds or starts PostgreSQL (and Redis when available), installs the schema, starts a
local SMTP sink and action endpoint (so that every built-in job type has somewhere to
go), the API/dashboard server and worker processes running `pgjobs.examples.demo_app`
on a queue of their own (`demo`), enqueues sample jobs and a cron schedule, writes the
settings another shell needs to `.env` (never over a `.env` it did not write) and
prints them as an `export` line, then waits. SIGINT or SIGTERM stops every process it
started and every private server it started, in reverse order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from pgjobs.app import App
from pgjobs.config import Settings, load_settings
from pgjobs.dev import services as devservices
from pgjobs.dev.sinks import ActionEndpoint, SmtpSink, smtp_sink_available
from pgjobs.errors import ServiceUnavailable
from pgjobs.install import initialise

DEMO_APP = "pgjobs.examples.demo_app:app"
# The demo's workers serve this queue only, and every demo job goes to it: a worker the
# user starts next to the demo (on queue "default" or one of their own) never has its
# jobs taken by a worker that has no handler for them.
DEMO_QUEUE = "demo"
DEMO_DATABASE = "pgjobs"
DEMO_SENDER = "pgjobs demo <demo@example.com>"
DEMO_SCHEDULE = "demo-thumbnail-every-minute"
SERVER_START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
ENV_FILE = ".env"
# What another shell needs to reach the demo's services (the rest is demo-only).
USER_SETTINGS = ("DATABASE_URL", "JOBS_REDIS_URL", "JOBS_SMTP_URL", "JOBS_SMTP_FROM")

Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoOptions:
    data_dir: Path
    port: int | None = None
    workers: int = 2
    redis: bool = True
    private: bool = False
    worker_grace: float = 5.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


@dataclass
class Children:
    """The processes the demo started; all of them are stopped together."""

    env: dict[str, str]
    running: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str], echo: Echo) -> Child:
        # Own session: a Ctrl-C in the terminal reaches the demo only, which then stops
        # the children in order instead of everything dying at once.
        process = subprocess.Popen(
            [sys.executable, "-m", "pgjobs", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        child = Child(name, process)
        self.running.append(child)
        echo(f"started {name} (pid {process.pid})")
        return child

    def exited(self) -> list[tuple[Child, int]]:
        return [(c, code) for c in self.running if (code := c.process.poll()) is not None]

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every child, wait for all, SIGKILL what is left after `timeout`."""
        for child in self.running:
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.terminate()
        deadline = time.monotonic() + timeout
        for child in self.running:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self.running.clear()

    def kill(self) -> None:
        for child in self.running:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()


class StopSignal:
    """SIGINT/SIGTERM set an event; a second signal runs `on_second` (kill children)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.on_second: Callable[[], None] = lambda: None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():
            self.on_second()
        self.event.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignal]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


def resolve_services(
    data_dir: Path, *, redis: bool = True, private: bool = False, echo: Echo
) -> devservices.Resolution:
    """Find or start the services; on a server we found or started ourselves, use a
    database of its own rather than the server's `postgres` database."""
    sources = devservices.Sources.default(private=private)
    resolution = devservices.resolve(data_dir, sources, redis=redis)
    try:
        if resolution.postgres.source != "DATABASE_URL":
            resolution.postgres.url = devservices.ensure_database(
                resolution.postgres.url, DEMO_DATABASE
            )
    except BaseException:
        resolution.stop()
        raise
    for line in devservices.describe(resolution):
        echo(line)
    return resolution


@dataclass
class Sinks:
    """The local SMTP sink and action endpoint, and the settings that point at them."""

    smtp: SmtpSink | None = None
    actions: ActionEndpoint | None = None

    @classmethod
    def start(cls, data_dir: Path, echo: Echo) -> Sinks:
        sinks = cls()
        if smtp_sink_available():
            mailbox = data_dir / "mail"
            sinks.smtp = SmtpSink(mailbox, echo).start()
            echo(f"smtp:     {sinks.smtp.url}  (accepts every message, keeps it in {mailbox})")
        else:
            echo("note: no SMTP sink (pip install 'pgjobs[embedded]'): send-email jobs will fail")
        sinks.actions = ActionEndpoint(echo).start()
        echo(f"actions:  {sinks.actions.url}  (answers every custom job)")
        return sinks

    def environment(self) -> dict[str, str]:
        env = {}
        if self.smtp is not None:
            env["JOBS_SMTP_URL"] = self.smtp.url
            env["JOBS_SMTP_FROM"] = DEMO_SENDER
        if self.actions is not None:
            env["JOBS_CUSTOM_ACTION_URL"] = self.actions.url
        return env

    def stop(self) -> None:
        for sink in (self.smtp, self.actions):
            if sink is not None:
                sink.stop()


def demo_settings(
    resolution: devservices.Resolution, sinks: Sinks, data_dir: Path
) -> dict[str, str]:
    """The settings of the demo's processes: its services, its sinks, and folders in
    the data folder for the backup and file-cleanup samples."""
    env = devservices.service_environment(resolution)
    env.update(sinks.environment())
    backups = data_dir / "backups"
    backups.mkdir(parents=True, exist_ok=True)
    env["JOBS_BACKUP_DIR"] = str(backups.resolve())
    env["JOBS_CLEANUP_ROOTS"] = str(data_dir.resolve())
    return env


def child_environment(
    resolution: devservices.Resolution, settings: dict[str, str], port: int
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings)
    env["JOBS_DASHBOARD_PORT"] = str(port)
    env["PYTHONUNBUFFERED"] = "1"
    # The sample http-request and custom jobs call the demo's own server and action
    # endpoint, on loopback, which the default egress policy refuses.
    env.setdefault("JOBS_HTTP_ALLOW", "127.0.0.0/8,::1,localhost")
    if resolution.postgres.bin_dir is not None:
        # Backups (pg_dump) must use the tools of the server's own major version.
        env["PATH"] = f"{resolution.postgres.bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def user_settings(settings: dict[str, str]) -> dict[str, str]:
    return {name: settings[name] for name in USER_SETTINGS if name in settings}


def export_line(values: dict[str, str]) -> str:
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in values.items())


def _env_value(value: str) -> str:
    # Single quotes are literal in .env files; double quotes take backslash escapes.
    return f"'{value}'" if "'" not in value and "\n" not in value else json.dumps(value)


def write_env_file(directory: Path, values: dict[str, str]) -> Path | None:
    """Write `values` to `directory`/.env, unless a .env that the demo did not write is
    there (it is the user's: never overwritten). Returns the file written, or None."""
    path = directory / ENV_FILE
    try:
        if path.exists() and not devservices.written_by_demo(path):
            return None
        lines = [
            f"{devservices.DEMO_ENV_MARK}: the settings of its services. The demo rewrites",
            "# this file at each start and never touches a .env it did not write.",
            *(f"{name}={_env_value(value)}" for name, value in values.items()),
        ]
        path.write_text("\n".join(lines) + "\n")
    except OSError:
        return None
    return path


def choose_port(settings: Settings, requested: int | None, echo: Echo) -> int:
    if requested is not None:
        return requested
    port = settings.dashboard_port
    if devservices.port_open("127.0.0.1", port, timeout=0.2):
        free = devservices.free_port()
        echo(f"note: port {port} is in use; the server will listen on {free}")
        return free
    return port


def wait_for_health(url: str, child: Child, timeout: float = SERVER_START_TIMEOUT) -> bool:
    """True once GET `url` answers, False if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.process.poll() is None:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def sample_jobs(handlers: set[str], server_url: str | None, sinks: Sinks) -> list[dict[str, Any]]:
    """Jobs that show priorities, progress, a retry, a delay, a failure for good and
    each built-in type that has what it needs here."""
    jobs: list[dict[str, Any]] = [
        {
            "type": "resize-image",
            "payload": {"path": "photos/beach.jpg", "width": 1280},
            "options": {"priority": "high"},
        },
        {"type": "resize-image", "payload": {"path": "photos/cat.png", "width": 320}},
        {
            "type": "resize-image",
            "payload": {"path": "photos/avatar.png", "width": 64},
            "options": {"priority": "low"},
        },
        {"type": "flaky", "payload": {"fail_times": 1}, "options": {"attempts": 3}},
        # Fails on every attempt: the failures page and a failed job have content.
        {
            "type": "flaky",
            "payload": {"fail_times": 99},
            "options": {"attempts": 2, "backoff": [500]},
        },
        {
            "type": "resize-image",
            "payload": {"path": "photos/banner.png", "width": 1920},
            "options": {"delay": 3000},
        },
    ]
    builtin: list[dict[str, Any]] = [
        {"type": "database-backup", "payload": {"format": "custom", "compress": True}},
        {"type": "file-cleanup", "payload": {"target": "jobs", "dryRun": True}},
    ]
    if server_url is not None:
        builtin.append(
            {"type": "http-request", "payload": {"url": f"{server_url}/health", "method": "GET"}}
        )
    if sinks.smtp is not None:
        builtin.append(
            {
                "type": "send-email",
                "payload": {
                    "to": "you@example.com",
                    "subject": "Hello from the pgjobs demo",
                    "body": "This message went through the demo's local SMTP sink.",
                },
            }
        )
    if sinks.actions is not None:
        builtin.append(
            {"type": "custom", "payload": {"action": "greet", "input": {"name": "demo"}}}
        )
    jobs.extend(job for job in builtin if job["type"] in handlers)
    for job in jobs:
        job["queue"] = DEMO_QUEUE
    return jobs


def enqueue_samples(settings: Settings, server_url: str | None, sinks: Sinks, echo: Echo) -> int:
    # Function-level: importing the example builds its App, from the environment.
    from pgjobs.examples.demo_app import app as demo_app

    # The demo app's handlers and built-in types decide which samples make sense; the
    # jobs themselves are created through a plain App on the resolved settings.
    jobs = sample_jobs(set(demo_app.handlers), server_url, sinks)
    app = App(settings, builtin_types=False)
    try:
        app.create_many_sync(jobs)
        # Fires every minute (the workers' maintenance leader runs it): the schedules
        # page has content and a job arrives now and then.
        app.schedule_sync(
            DEMO_SCHEDULE,
            "resize-image",
            "* * * * *",
            {"path": "photos/cron.png", "width": 200, "step_seconds": 0.1},
            queue=DEMO_QUEUE,
            description="a thumbnail every minute, from pgjobs demo",
            replace=True,
        )
    finally:
        app.close_sync()
    kinds: dict[str, int] = {}
    for job in jobs:
        kinds[job["type"]] = kinds.get(job["type"], 0) + 1
    echo(
        f"enqueued {len(jobs)} sample jobs on queue {DEMO_QUEUE!r}: "
        + ", ".join(f"{n} {t}" if n > 1 else t for t, n in kinds.items())
    )
    echo(f"scheduled {DEMO_SCHEDULE!r}: resize-image every minute")
    return len(jobs)


def run_demo(options: DemoOptions, *, has_server: bool, has_worker: bool, echo: Echo) -> int:
    """Run until SIGINT/SIGTERM; return the exit status (0 after a requested stop)."""
    settings = load_settings()
    stop = StopSignal()
    with stop.installed():
        echo("== finding or starting PostgreSQL and Redis")
        resolution = resolve_services(
            options.data_dir, redis=options.redis, private=options.private, echo=echo
        )
        children: Children | None = None
        sinks = Sinks()
        try:
            settings = settings.replace(
                database_url=resolution.postgres.url,
                redis_url=resolution.redis.url if resolution.redis else None,
            )
            echo("== installing the schema (pgjobs init)")
            for line in initialise(settings).lines():
                echo(f"init: {line}")
            echo("== starting a local SMTP sink and action endpoint")
            sinks = Sinks.start(options.data_dir, echo)
            values = demo_settings(resolution, sinks, options.data_dir)
            # Before the children start: they read ./.env too (below their environment).
            env_file = write_env_file(Path.cwd(), user_settings(values))
            port = choose_port(settings, options.port, echo)
            children = Children(child_environment(resolution, values, port))
            stop.on_second = children.kill
            server_url = start_server(children, settings, port, has_server, echo)
            start_workers(children, options, has_worker, echo)
            if stop.event.is_set():
                return 0
            echo("== enqueueing sample jobs")
            enqueue_samples(settings, server_url, sinks, echo)
            echo("== ready")
            if server_url is not None:
                echo(f"dashboard: {server_url}{settings.dashboard_path}")
                echo(f"api:       {server_url}/api/stats")
            tell_how_to_connect(user_settings(values), env_file, echo)
            echo("Press Ctrl-C to stop.")
            return supervise(children, stop, echo)
        finally:
            echo("stopping ...")
            if children is not None:
                children.stop()
            sinks.stop()
            for name in resolution.stop():
                echo(f"stopped private {name}")
            echo("stopped.")


def tell_how_to_connect(values: dict[str, str], env_file: Path | None, echo: Echo) -> None:
    """Say where the settings another shell needs are, and print them as one `export`
    line."""
    if env_file is not None:
        echo(f"settings: written to {env_file}; pgjobs commands run in {env_file.parent} read it")
    else:
        echo(f"settings: {Path.cwd() / ENV_FILE} is not the demo's and was left alone")
    echo("in another shell (or anywhere else), set them with:")
    echo(export_line(values))
    echo(
        f"the demo's workers serve queue {DEMO_QUEUE!r} only: give your own jobs a queue "
        "of your own and run a worker for it (README: Your first job in five minutes)"
    )


def start_server(
    children: Children, settings: Settings, port: int, has_server: bool, echo: Echo
) -> str | None:
    if not has_server:
        echo("note: this version has no `pgjobs server` command; skipping the API and dashboard")
        return None
    echo("== starting the API and dashboard (pgjobs server)")
    server = children.start("server", ["server"], echo)
    host = settings.dashboard_host
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if not wait_for_health(f"{base}/health", server):
        raise ServiceUnavailable(f"the server did not answer on {base}/health")
    return base


def start_workers(children: Children, options: DemoOptions, has_worker: bool, echo: Echo) -> None:
    if not has_worker:
        echo("note: this version has no `pgjobs worker` command; jobs will wait in the queue")
        return
    if options.workers:
        echo(f"== starting {options.workers} workers for queue {DEMO_QUEUE!r} (pgjobs worker)")
    for index in range(1, options.workers + 1):
        children.start(
            f"worker-{index}",
            [
                "worker",
                DEMO_QUEUE,
                "--app",
                DEMO_APP,
                "--grace",
                str(options.worker_grace),
            ],
            echo,
        )


def supervise(children: Children, stop: StopSignal, echo: Echo) -> int:
    """Wait for a stop signal; a child that exits on its own ends the demo with status 1."""
    while not stop.event.wait(0.2):
        for child, code in children.exited():
            echo(f"{child.name} (pid {child.process.pid}) exited with status {code}")
            return 1
    return 0


def run_dev_services(data_dir: Path, *, redis: bool, private: bool, echo: Echo) -> int:
    """Find or start the services, print how to use them, keep what was started running
    until SIGINT/SIGTERM, then stop it."""
    stop = StopSignal()
    with stop.installed():
        resolution = resolve_services(data_dir, redis=redis, private=private, echo=echo)
        try:
            for name, value in devservices.service_environment(resolution).items():
                echo(f"export {name}={shlex.quote(value)}")
            if not resolution.started:
                return 0
            echo("Press Ctrl-C to stop the services started here.")
            while not stop.event.wait(0.5):
                pass
            return 0
        finally:
            for name in resolution.stop():
                echo(f"stopped private {name}")
