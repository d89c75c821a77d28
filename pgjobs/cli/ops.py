"""`pgjobs` operator commands: server, stats, retry, clean, pause, resume, cancel,
delete, queues, workers, jobs.

Each command calls one operation of pgjobs.ops and formats its result: an aligned table
for people, `--json` for programs. Errors print one line and exit 2.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import psycopg
from psycopg_pool import PoolTimeout

from pgjobs.app import App
from pgjobs.cli.common import fail, handle_errors, print_json, settings_from
from pgjobs.cli.logs import log_options, start_logging
from pgjobs.cli.output import echo
from pgjobs.cli.tables import ago, percent, table
from pgjobs.config import Settings
from pgjobs.db import connect_async, connect_sync, describe_connect_error
from pgjobs.replica import observe_reads
from pgjobs.retention import CleanReport
from pgjobs.validation import DEFAULT_LIMIT, MAX_LIMIT, MIN_LIMIT

if TYPE_CHECKING:
    from pgjobs.ops import Ops

T = TypeVar("T")

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def run_ops(settings: Settings, action: Callable[[Ops], Awaitable[T]]) -> T:
    """Run `action(ops)` with a fresh App, closing its connections afterwards. Every
    command that changes something goes through here, so its change is made, and
    recorded in the audit trail with `actor()`, by pgjobs.ops. When its reads were
    meant for a read replica, where they ran is said on stderr (stdout stays the
    result, JSON included)."""
    # pgjobs.ops is imported by the commands that use it, not by `pgjobs worker`,
    # whose start-up is the time to its first claim.
    from pgjobs.ops import Ops

    async def main() -> T:
        url = settings.require_database_url()
        probe = await connect_async(
            url, "cli", pooled=settings.transaction_pooling
        )  # one clear line if PostgreSQL is down
        await probe.close()
        app = App(settings)
        try:
            with observe_reads() as reads:
                result = await action(Ops(app))
            if reads.note is not None:
                echo(f"note: {reads.note}", err=True)
            return result
        finally:
            await app.close()

    try:
        return asyncio.run(main())
    except psycopg.errors.UndefinedTable:
        fail("the pgjobs schema is not installed in this database: run `pgjobs init`")
    except (psycopg.OperationalError, PoolTimeout) as exc:
        fail(describe_connect_error(settings.database_url or "", exc))


def register(group: click.Group) -> None:
    """Add this module's commands to `group`."""
    for command in (server, stats, retry, clean, pause, resume, cancel, delete, queues, workers):
        group.add_command(command)
    group.add_command(jobs_command)


# ------------------------------------------------------------------ server


@click.command()
@click.option("--host", default=None, help="Address to bind (default JOBS_DASHBOARD_HOST).")
@click.option("--port", default=None, help="Port (default JOBS_DASHBOARD_PORT, 3105).")
@log_options
@click.pass_context
@handle_errors
def server(
    ctx: click.Context,
    host: str | None,
    port: str | None,
    log_file: str | None,
    log_format: str | None,
) -> None:
    """Serve the REST API, /metrics and the dashboard (uvicorn).

    Requests are logged (one line each) when LOG_LEVEL is debug."""
    # Function-level: starlette and uvicorn load only for the command that serves.
    import uvicorn

    from pgjobs.web import create_app
    from pgjobs.web.auth import is_loopback, startup_problem
    from pgjobs.web.hosts import allowed_hosts

    settings = settings_from(ctx)
    bind_host = (host or settings.dashboard_host).strip()
    # The bind address is one of the host names the server answers to.
    settings = settings.replace(dashboard_host=bind_host)
    bind_port = settings.dashboard_port
    if port is not None:
        if not port.strip().isdigit() or not 1 <= int(port) <= 65535:
            fail(f"--port must be a TCP port between 1 and 65535 (got {port!r})")
        bind_port = int(port)
    problem = startup_problem(settings, bind_host)
    if problem:
        fail(problem)
    target = start_logging(settings, log_file, log_format)
    connect_sync(
        settings.require_database_url(), "api", pooled=settings.transaction_pooling
    ).close()
    log = logging.getLogger("pgjobs.server")

    def announce(line: str) -> None:
        echo(line, err=True)
        if target.path is not None:
            log.info("%s", line)

    shown = f"[{bind_host}]" if ":" in bind_host else bind_host
    dashboard = f", dashboard at {settings.dashboard_path}" if settings.dashboard_enabled else ""
    announce(f"pgjobs server on http://{shown}:{bind_port}{dashboard}")
    if not settings.allowed_hosts and not is_loopback(bind_host):
        announce(
            f"answering only requests for {', '.join(allowed_hosts(settings))}: "
            "set JOBS_ALLOWED_HOSTS to the names clients use"
        )
    uvicorn.run(
        create_app(settings),
        host=bind_host,
        port=bind_port,
        # To a file or as JSON, uvicorn's records go through pgjobs's handler (uvicorn
        # then configures no handler of its own); otherwise it prints as it always has.
        log_config=None
        if target.path or target.format == "json"
        else uvicorn.config.LOGGING_CONFIG,
        log_level=settings.log_level,
        lifespan="on",
        access_log=settings.log_level == "debug",
        server_header=False,
    )


# ------------------------------------------------------------------ stats


@click.command()
@click.option("--queue", default=None, help="Only this queue.")
@click.option("--time", "hours", default="24", show_default=True, help="Window in hours.")
@click.option("--performance", is_flag=True, help="Add p50/p95/p99 run durations.")
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes.")
@json_option
@click.pass_context
@handle_errors
def stats(
    ctx: click.Context,
    queue: str | None,
    hours: str,
    performance: bool,
    watch: bool,
    interval: float,
    as_json: bool,
) -> None:
    """Counts per queue and status, throughput, failure rate and health score."""
    from pgjobs.ops import window_hours

    window = window_hours(hours)
    if not 0.1 <= interval <= 3600:
        fail("--interval must be between 0.1 and 3600 seconds")

    async def once(ops: Any) -> str:
        report = await ops.stats(queue=queue, hours=window, performance=performance)
        if as_json:
            return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
        return format_stats(report)

    if not watch:
        echo(run_ops(settings_from(ctx), once))
        return

    async def loop(ops: Any) -> None:
        while True:
            with observe_reads() as reads:
                text = await once(ops)
            if reads.note is not None:
                text += f"\n{reads.note}"
            stamp = time.strftime("%H:%M:%S")
            # Home the cursor and clear the screen, then draw: one refresh, no scrolling.
            sys.stdout.write("\x1b[H\x1b[2J" + text + f"\n\nrefreshed {stamp} — Ctrl-C to stop\n")
            sys.stdout.flush()
            await asyncio.sleep(interval)

    try:
        run_ops(settings_from(ctx), loop)
    except KeyboardInterrupt:
        echo("")


def format_stats(report: Any) -> str:
    from pgjobs.ops import format_duration_ms
    from pgjobs.ops.health import long_transaction_warning

    rows = []
    for q in report.queues:
        w = q.window
        rows.append(
            [
                q.name + (" (paused)" if q.is_paused else ""),
                q.waiting,
                q.active,
                q.delayed,
                q.paused,
                q.completed,
                q.failed,
                w.processed,
                round(w.throughput_per_min, 2),
                percent(w.failure_rate),
                q.health_score,
            ]
        )
    hours = f"{report.window_hours:g}h"
    out = [
        table(
            [
                "queue",
                "waiting",
                "active",
                "delayed",
                "paused",
                "completed",
                "failed",
                f"done/{hours}",
                "per min",
                f"fail/{hours}",
                "health",
            ],
            rows,
        )
    ]
    db = report.database
    oldest = db.oldest_transaction_s
    out.append("")
    out.append(
        f"workers: {report.workers} live   jobs table: {db.live_tuples} live / "
        f"{db.dead_tuples} dead tuples   oldest transaction: "
        f"{'-' if oldest is None else f'{oldest:.0f}s'}"
    )
    warning = long_transaction_warning(oldest)
    if warning is not None:
        out.append(warning)
    if report.performance is not None:
        perf_rows = [
            [
                p.queue,
                p.type or "(all)",
                p.runs,
                format_duration_ms(p.p50_ms),
                format_duration_ms(p.p95_ms),
                format_duration_ms(p.p99_ms),
                format_duration_ms(p.max_ms),
            ]
            for p in report.performance
        ]
        out.append("")
        out.append(f"run durations, completed in the last {hours}:")
        if perf_rows:
            out.append(table(["queue", "type", "runs", "p50", "p95", "p99", "max"], perf_rows))
        else:
            out.append("(no completed runs in the window)")
    return "\n".join(out)


# ------------------------------------------------------------------ retry / clean


@click.command()
@click.option("--queue", default=None, help="Only failed jobs of this queue.")
@click.option("--limit", default=10, show_default=True, help="At most this many jobs.")
@click.option("--type", "type_", default=None, help="Only failed jobs of this type.")
@click.option("--id", "job_id", default=None, help="Retry this one job (failed or cancelled).")
@click.option("--show", is_flag=True, help="List retryable jobs without retrying them.")
@json_option
@click.pass_context
@handle_errors
def retry(
    ctx: click.Context,
    queue: str | None,
    limit: int,
    type_: str | None,
    job_id: str | None,
    show: bool,
    as_json: bool,
) -> None:
    """Retry failed jobs (most recent failure first)."""
    if not 1 <= limit <= 10_000:
        fail("--limit must be between 1 and 10000")
    settings = settings_from(ctx)
    if job_id is not None and not show:
        job = run_ops(settings, lambda ops: ops.retry_job(job_id, actor=actor()))
        if as_json:
            print_json(job.to_dict())
        else:
            echo(f"retried {job.id} ({job.type} on {job.queue}): now {job.status}")
        return
    ids = [job_id] if job_id is not None else None
    report = run_ops(
        settings,
        lambda ops: ops.retry(
            queue=queue, type=type_, ids=ids, limit=limit, show=show, actor=actor()
        ),
    )
    if as_json:
        print_json(report.to_dict())
        return
    if report.count == 0:
        echo("no failed jobs to retry")
        return
    rows = [
        [
            str(j.id),
            j.type,
            j.queue,
            f"{j.attempts}/{j.max_attempts}",
            ago(j.failed_at),
            (j.last_error or "").splitlines()[0] if j.last_error else "-",
        ]
        for j in report.jobs
    ]
    headers = ["id", "type", "queue", "attempts", "failed", "last error"]
    if show:
        echo(table(headers, rows))
        echo(f"\n{report.count} retryable job(s); nothing was changed (--show)")
    else:
        echo(table(headers[:4], [r[:4] for r in rows]))
        echo(f"\nretried {report.count} job(s)")


@click.command()
@click.option("--completed-older-than", default=None, help="e.g. 24h, 7d (default setting).")
@click.option("--failed-older-than", default=None, help="Failed and cancelled jobs; e.g. 30d.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@json_option
@click.pass_context
@handle_errors
def clean(
    ctx: click.Context,
    completed_older_than: str | None,
    failed_older_than: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete old finished jobs (with their results and failures) in batches.

    With no age given, JOBS_CLEAN_COMPLETED_AFTER and JOBS_CLEAN_FAILED_AFTER apply.
    Jobs that a blocked job still depends on are kept. Jobs that a table of your own
    references with a foreign key forbidding the delete are kept too: one line per such
    constraint says how many, and the exit status is 2.
    """
    from pgjobs.ops import parse_duration_ms

    completed_ms = (
        parse_duration_ms(completed_older_than, name="--completed-older-than")
        if completed_older_than is not None
        else None
    )
    failed_ms = (
        parse_duration_ms(failed_older_than, name="--failed-older-than")
        if failed_older_than is not None
        else None
    )
    report = run_ops(
        settings_from(ctx),
        lambda ops: ops.clean(
            completed_older_than_ms=completed_ms,
            failed_older_than_ms=failed_ms,
            dry_run=dry_run,
            actor=actor(),
        ),
    )
    if as_json:
        print_json(report.to_dict())
    else:
        echo(clean_summary(report))
    # Some jobs could not go: the one line per constraint says why, and the exit status
    # tells a script the clean was partial.
    for skipped in report.skipped:
        echo(f"error: {skipped.line()}", err=True)
    if report.skipped:
        sys.exit(2)


def clean_summary(report: CleanReport) -> str:
    from pgjobs.ops import format_duration_ms

    verb = "would delete" if report.dry_run else "deleted"
    parts = []
    if report.completed_older_than_ms is not None:
        age = format_duration_ms(report.completed_older_than_ms)
        parts.append(f"{report.completed} completed (older than {age})")
    if report.failed_older_than_ms is not None:
        age = format_duration_ms(report.failed_older_than_ms)
        parts.append(f"{report.failed} failed/cancelled (older than {age})")
    return f"{verb} {report.total} job(s): " + ", ".join(parts)


# ------------------------------------------------------------------ queues and jobs


@click.command()
@click.argument("queue")
@json_option
@click.pass_context
@handle_errors
def pause(ctx: click.Context, queue: str, as_json: bool) -> None:
    """Pause QUEUE: workers stop claiming its jobs (running jobs finish)."""
    state = run_ops(settings_from(ctx), lambda ops: ops.pause(queue, actor=actor()))
    print_json(state.to_dict()) if as_json else echo(f"paused {state.name}")


@click.command()
@click.argument("queue")
@json_option
@click.pass_context
@handle_errors
def resume(ctx: click.Context, queue: str, as_json: bool) -> None:
    """Resume QUEUE."""
    state = run_ops(settings_from(ctx), lambda ops: ops.resume(queue, actor=actor()))
    print_json(state.to_dict()) if as_json else echo(f"resumed {state.name}")


@click.command()
@click.argument("job_id")
@json_option
@click.pass_context
@handle_errors
def cancel(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Cancel a job (a running one is signalled and stops at its next check)."""
    job = run_ops(settings_from(ctx), lambda ops: ops.cancel_job(job_id, actor=actor()))
    if as_json:
        print_json(job.to_dict())
    elif job.status == "active":
        echo(f"cancel requested for running job {job.id}")
    else:
        echo(f"cancelled {job.id}")


@click.command()
@click.argument("job_id")
@click.pass_context
@handle_errors
def delete(ctx: click.Context, job_id: str) -> None:
    """Delete a job that is not running, with its results and failures."""
    run_ops(settings_from(ctx), lambda ops: ops.delete_job(job_id, actor=actor()))
    echo(f"deleted {job_id}")


@click.command()
@json_option
@click.pass_context
@handle_errors
def queues(ctx: click.Context, as_json: bool) -> None:
    """Every known queue with its counts, pause state and health."""
    result = run_ops(settings_from(ctx), lambda ops: ops.queues())
    if as_json:
        print_json([q.to_dict() for q in result])
        return
    rows = [
        [
            q.name,
            "paused" if q.is_paused else "running",
            q.waiting + q.paused,
            q.active,
            q.delayed,
            q.failed,
            q.completed,
            q.health_score,
        ]
        for q in result
    ]
    headers = ["queue", "state", "waiting", "active", "delayed", "failed", "completed", "health"]
    echo(table(headers, rows))


@click.command()
@json_option
@click.pass_context
@handle_errors
def workers(ctx: click.Context, as_json: bool) -> None:
    """Worker processes, their queues, load and last heartbeat."""
    result = run_ops(settings_from(ctx), lambda ops: ops.workers())
    if as_json:
        print_json([w.to_dict() for w in result])
        return
    if not result:
        echo("no workers have registered")
        return
    rows = [
        [
            w.hostname,
            w.pid,
            ",".join(w.queues),
            w.concurrency,
            w.in_flight,
            w.processed,
            ago(w.last_heartbeat_at),
            "yes" if w.alive else "NO",
        ]
        for w in result
    ]
    headers = [
        "host",
        "pid",
        "queues",
        "concurrency",
        "in flight",
        "processed",
        "heartbeat",
        "alive",
    ]
    echo(table(headers, rows))


@click.command("jobs")
@click.option("--queue", default=None)
@click.option("--status", default=None, help="e.g. failed, or waiting,delayed")
@click.option("--type", "type_", default=None)
@click.option(
    "--limit", default=str(DEFAULT_LIMIT), show_default=True, help=f"{MIN_LIMIT}-{MAX_LIMIT}."
)
@click.option("--cursor", default=None, help="Continue after a previous page.")
@click.option(
    "--search",
    default=None,
    help="Search every queue instead, e.g. 'user_id=42 status:failed' or "
    "'error:\"connection refused\"' (the dashboard's search syntax; no other filter).",
)
@json_option
@click.pass_context
@handle_errors
def jobs_command(
    ctx: click.Context,
    queue: str | None,
    status: str | None,
    type_: str | None,
    limit: str,
    cursor: str | None,
    search: str | None,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    if search is not None:
        if queue or status or type_:
            raise click.UsageError(
                "--search takes no --queue, --status or --type: write "
                "them into the search (queue:NAME status:S type:T)"
            )
        page = run_ops(
            settings_from(ctx), lambda ops: ops.search_jobs(search, limit=limit, cursor=cursor)
        )
    else:
        from pgjobs.ops import JobFilter

        filters = JobFilter.build(queue=queue, status=status, type=type_)
        page = run_ops(
            settings_from(ctx), lambda ops: ops.list_jobs(filters, limit=limit, cursor=cursor)
        )
    if as_json:
        print_json(page.to_dict())
        return
    rows = [
        [
            str(j.id),
            j.type,
            j.queue,
            j.status,
            j.priority,
            f"{j.attempts}/{j.max_attempts}",
            ago(j.created_at),
        ]
        for j in page.jobs
    ]
    echo(table(["id", "type", "queue", "status", "priority", "attempts", "created"], rows))
    if page.next_cursor:
        echo(f"\nmore: --cursor {page.next_cursor}")
