"""The dashboard's pages (GET handlers): read through pgjobs.ops, shape the data for
one template, render. Nothing here changes anything (see actions.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pgjobs.errors import JobNotFound, NotFound, ValidationError
from pgjobs.ops import JobFilter, JobLogLine, QueueCounts, WorkerInfo, attempt_logs
from pgjobs.producer.options import validate_queue
from pgjobs.redact import mask_text
from pgjobs.resources import data_path
from pgjobs.web.dashboard import format as fmt
from pgjobs.web.dashboard.charts import failure_rate_chart, throughput_chart
from pgjobs.web.dashboard.forms import MISFIRE_POLICIES, ScheduleForm, timezone_names
from pgjobs.web.dashboard.history import History
from pgjobs.web.dashboard.render import PAGE_HEADERS, STATIC_FILES, Dashboard
from pgjobs.web.dashboard.security import Forbidden, read_only
from pgjobs.web.dashboard.stacks import split_stack
from pgjobs.web.headers import SECURITY_HEADERS
from pgjobs.web.requests import query_param, schedule_name_param
from pgjobs.web.shown import masked_group, masked_job, masked_summary
from pgjobs.web.state import ops_of

# How long a page waits for the first fill of the throughput history (started with the
# server) before it renders without charts; the fill goes on, and the page reloads
# itself once it is done.
HISTORY_WAIT_S = 0.05
PAGE_SIZE = 50
PREVIEW_CHARS = 120
DETAIL_CHARS = 64 * 1024
STACK_CHARS = 20_000
AUDIT_LIMIT = 200
FAILURE_WINDOWS = {"1": 1.0, "24": 24.0, "168": 168.0}
NEXT_RUNS = 3
COUNT_FIELDS = ("waiting", "active", "delayed", "paused", "blocked", "completed", "failed")
# Status tabs of the queue page: (tab name, statuses listed, count fields summed).
TABS: tuple[tuple[str, str | None, tuple[str, ...]], ...] = (
    ("all", None, (*COUNT_FIELDS, "cancelled")),
    ("waiting", "pending", ("waiting", "paused")),
    ("active", "active", ("active",)),
    ("delayed", "delayed", ("delayed",)),
    ("blocked", "blocked", ("blocked",)),
    ("completed", "completed", ("completed",)),
    ("failed", "failed", ("failed",)),
    ("cancelled", "cancelled", ("cancelled",)),
)
# Notices after an action, by the `done` query parameter; never text from the URL.
NOTICES = {
    "retry": "Retried {n} job(s).",
    "cancel": "Cancelled the job (a running job stops at its next check).",
    "promote": "Promoted {n} delayed job(s) to run now.",
    "delete": "Deleted the job.",
    "clean": "Deleted {n} completed job(s).",
    "pause": "Paused the queue: workers take no new jobs from it.",
    "resume": "Resumed the queue.",
    "enable": "Enabled the schedule.",
    "disable": "Disabled the schedule.",
    "schedule-delete": "Deleted the schedule.",
    "schedule-create": "Created the schedule.",
    "schedule-update": "Saved the schedule.",
    "schedule-same": "Nothing to save: the form matched the schedule.",
    "schedule-run": "Enqueued the schedule's job; its next run is unchanged.",
}


# Bulk actions: the notice is built from counts and known reasons only.
BULK_DONE = {
    "bulk-retry": "Retried",
    "bulk-cancel": "Cancelled",
    "bulk-delete": "Deleted",
    "bulk-promote": "Promoted",
}
SKIP_REASONS = {
    "pending": "waiting",
    "active": "running",
    "delayed": "delayed",
    "blocked": "blocked",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "missing": "no longer exists",
    "waited_on": "other jobs wait on it",
    "referenced": "still referenced",
}


def _count(text: str) -> int:
    return int(text) if text.isdigit() and len(text) < 10 else 0


def notice(request: Request) -> str | None:
    done = request.query_params.get("done", "")
    n = _count(request.query_params.get("n", "0"))
    if done in BULK_DONE:
        return _bulk_notice(BULK_DONE[done], n, request.query_params.get("skip", ""))
    template = NOTICES.get(done)
    if template is None:
        return None
    return template.format(n=n)


def _bulk_notice(verb: str, n: int, skip: str) -> str:
    """The notice of a bulk action, e.g. "Retried 3 job(s); skipped 2 (running)."."""
    skipped = []
    for item in skip.split(",")[: len(SKIP_REASONS)]:
        reason, _, count = item.partition(":")
        if reason in SKIP_REASONS and _count(count):
            skipped.append(f"{_count(count)} ({SKIP_REASONS[reason]})")
    text = f"{verb} {n} job(s)"
    return f"{text}; skipped {', '.join(skipped)}." if skipped else f"{text}."


# ---------------------------------------------------------------- overview


@dataclass(frozen=True, slots=True)
class QueueRow:
    counts: QueueCounts
    hour: tuple[int, int]
    day: tuple[int, int]
    spark: Any


def _totals(queues: tuple[QueueCounts, ...]) -> dict[str, int]:
    return {f: sum(int(getattr(q, f)) for q in queues) for f in (*COUNT_FIELDS, "cancelled")}


def _estimated(queues: tuple[QueueCounts, ...]) -> list[str]:
    """The total counts that include an estimate."""
    return sorted(set().union(*(q.estimated for q in queues)))


def _charts(history: History | None) -> dict[str, Any] | None:
    if history is None:
        return None
    hour = history.buckets(60, 1)
    day = history.buckets(48, 30)
    return {
        "hour": throughput_chart(hour, width_minutes=1, label="Last hour, per minute"),
        "hour_rate": failure_rate_chart(hour, width_minutes=1, label="Failure rate, last hour"),
        "day": throughput_chart(day, width_minutes=30, label="Last 24 hours, per 30 minutes"),
        "day_rate": failure_rate_chart(day, width_minutes=30, label="Failure rate, last 24 hours"),
    }


async def overview(request: Request, dash: Dashboard) -> Response:
    ops = ops_of(request)
    queues, workers, history = await asyncio.gather(
        ops.queue_counts(), ops.workers(), dash.history.get(ops, HISTORY_WAIT_S)
    )
    rows = []
    for q in queues:
        spark = None
        if history is not None:
            spark = throughput_chart(
                history.buckets(24, 60, q.name),
                width_minutes=60,
                label="Last 24 hours, per hour",
                width=96,
                height=20,
                small=True,
            )
        rows.append(
            QueueRow(
                counts=q,
                hour=history.totals(60, q.name) if history else (0, 0),
                day=history.totals(24 * 60, q.name) if history else (0, 0),
                spark=spark,
            )
        )
    context = {
        "nav": "overview",
        "queues": rows,
        "totals": _totals(queues),
        "estimated": _estimated(queues),
        "workers": sum(1 for w in workers if w.alive),
        "charts": _charts(history),
        "hour": history.totals(60) if history else (0, 0),
        "day": history.totals(24 * 60) if history else (0, 0),
        "notice": notice(request),
    }
    return dash.render(request, "overview.html", context, now=ops.clock.now())


async def counts(request: Request, dash: Dashboard) -> Response:
    """The overview's numbers as JSON, for the auto-refresh script."""
    ops = ops_of(request)
    queues, workers = await asyncio.gather(ops.queue_counts(), ops.workers())
    dash.history.warm_up(ops)
    body = {
        "queues": [q.to_dict() for q in queues],
        "totals": _totals(queues),
        "totals_estimated": _estimated(queues),
        "workers": sum(1 for w in workers if w.alive),
        "history_ready": dash.history.ready,
    }
    return JSONResponse(body, headers=PAGE_HEADERS)


# ---------------------------------------------------------------- queue


def queue_name(request: Request) -> str:
    raw = str(request.path_params["name"])
    try:
        return validate_queue(raw)
    except ValidationError:
        raise NotFound(f"no queue named {raw[:100]!r}") from None


async def queue(request: Request, dash: Dashboard) -> Response:
    ops = ops_of(request)
    name = queue_name(request)
    found = next((q for q in await ops.queue_counts() if q.name == name), None)
    if found is None:
        raise NotFound(f"no queue named {name!r}")
    tab = query_param(request, "status") or "all"
    tabs = [
        (
            t,
            sum(int(getattr(found, f)) for f in fields),
            t == tab,
            bool(found.estimated & {*fields}),
        )
        for t, _, fields in TABS
    ]
    status = next((s for t, s, _ in TABS if t == tab), None)
    type_filter = query_param(request, "type") or ""
    id_filter = query_param(request, "id") or ""
    cursor = query_param(request, "cursor")
    error = None
    jobs: tuple[Any, ...] = ()
    next_cursor = None
    try:
        if not any(t == tab for t, _, _ in TABS):
            raise ValidationError(f"unknown status tab {tab[:40]!r}")
        tab_count = next(n for t, n, _, _ in tabs if t == tab)
        filters = JobFilter.build(
            queue=name, status=status, type=type_filter or None, id_prefix=id_filter or None
        )
        # An empty tab needs no listing, which could otherwise walk a large index.
        if tab_count or cursor:
            page = await ops.list_jobs(filters, limit=PAGE_SIZE, cursor=cursor)
            jobs, next_cursor = tuple(map(masked_summary, page.jobs)), page.next_cursor
    except ValidationError as exc:
        error = str(exc)
    context = {
        "nav": "queues",
        "queue": found,
        "tabs": tabs,
        "tab": tab,
        "type_filter": type_filter,
        "id_filter": id_filter,
        "jobs": jobs,
        "next_cursor": next_cursor,
        "paged": cursor is not None,
        "filter_error": error,
        "preview_chars": PREVIEW_CHARS,
        "notice": notice(request),
    }
    return dash.render(request, "queue.html", context, now=ops.clock.now())


# ---------------------------------------------------------------- job


def job_id(request: Request) -> UUID:
    raw = str(request.path_params["id"])
    try:
        return UUID(raw)
    except ValueError:
        raise JobNotFound(f"no job with id {raw[:80]!r} (job ids are UUIDs)") from None


async def job(request: Request, dash: Dashboard) -> Response:
    ops = ops_of(request)
    stored = await ops.get_job(job_id(request))
    parents, children = await ops.job_links(stored)
    # Secrets in the error texts are masked before the stacks are folded and cut: a cut
    # could leave a password without the '@' that marks it.
    found = masked_job(stored)
    logged = await ops.job_logs(found.id)
    logs = attempt_logs(tuple(_masked(line) for line in logged.lines))
    payload, payload_cut = fmt.pretty_json(found.payload, DETAIL_CHARS)
    result, result_cut = (
        fmt.pretty_json(found.result, DETAIL_CHARS) if found.results else ("", False)
    )
    failures = [
        {
            "failure": f,
            "stack": split_stack(fmt.truncate(f.error_stack, STACK_CHARS)),
            "stack_cut": len(f.error_stack or "") > STACK_CHARS,
        }
        for f in reversed(found.failures)
    ]
    now = ops.clock.now()
    due = max(found.created_at, found.run_at)
    finished = found.completed_at or (now if found.status == "active" else None)
    context = {
        "nav": "queues",
        "job": found,
        "waited": fmt.between(due, found.started_at) if found.started_at else "-",
        "ran": fmt.between(found.started_at, finished),
        "payload": payload,
        "payload_cut": payload_cut,
        "result": result,
        "result_cut": result_cut,
        "metadata": fmt.pretty_json(found.metadata, DETAIL_CHARS)[0] if found.metadata else "",
        "failures": failures,
        "parents": parents,
        "children": children,
        "logs": logs,
        "logs_attempts_omitted": logged.attempts_omitted,
        "notice": notice(request),
    }
    return dash.render(request, "job.html", context, now=now)


def _masked(line: JobLogLine) -> JobLogLine:
    """A log line with URL passwords and secret-looking values masked, as error texts."""
    return replace(line, message=mask_text(line.message))


# ---------------------------------------------------------------- search


async def search(request: Request, dash: Dashboard) -> Response:
    """Jobs of every queue matching the search box's query (pgjobs.ops.search)."""
    ops = ops_of(request)
    text = query_param(request, "q") or ""
    cursor = query_param(request, "cursor")
    jobs: tuple[Any, ...] = ()
    next_cursor = None
    error = None
    if text.strip():
        try:
            page = await ops.search_jobs(text, limit=PAGE_SIZE, cursor=cursor)
            jobs, next_cursor = tuple(map(masked_summary, page.jobs)), page.next_cursor
        except ValidationError as exc:
            error = str(exc)
    context = {
        "nav": "search",
        "q": text,
        "jobs": jobs,
        "next_cursor": next_cursor,
        "paged": cursor is not None,
        "search_error": error,
        "preview_chars": PREVIEW_CHARS,
        "notice": notice(request),
    }
    return dash.render(request, "search.html", context, now=ops.clock.now())


# ---------------------------------------------------------------- failures


async def failures(request: Request, dash: Dashboard) -> Response:
    ops = ops_of(request)
    window = query_param(request, "hours") or "24"
    if window not in FAILURE_WINDOWS:
        window = "24"
    groups = await ops.failure_groups(hours=FAILURE_WINDOWS[window], limit=100)
    context = {
        "nav": "failures",
        "groups": [masked_group(g) for g in groups],
        "window": window,
        "windows": list(FAILURE_WINDOWS),
        "notice": notice(request),
    }
    return dash.render(request, "failures.html", context, now=ops.clock.now())


# ---------------------------------------------------------------- schedules


async def schedules(request: Request, dash: Dashboard) -> Response:
    ops = ops_of(request)
    found = await ops.schedules()
    runs = await ops.schedule_last_runs([s.id for s in found])
    rows = []
    for s in found:
        try:
            upcoming = s.next_runs(NEXT_RUNS)
        except ValidationError:  # edited by SQL into something this version cannot read
            upcoming = ()
        rows.append({"schedule": s, "upcoming": upcoming, "last": runs.get(s.id)})
    context = {"nav": "schedules", "rows": rows, "notice": notice(request)}
    return dash.render(request, "schedules.html", context, now=ops.clock.now())


def schedule_form(
    request: Request,
    dash: Dashboard,
    form: ScheduleForm,
    *,
    editing: bool,
    status: int = 200,
    now: Any = None,
) -> Response:
    """The create or edit form, blank, as stored, or as posted with its error."""
    context = {
        "nav": "schedules",
        "form": form,
        "editing": editing,
        "misfire_policies": MISFIRE_POLICIES,
        "timezones": timezone_names(),
        "target": dash.url("schedules", form.name, "edit") if editing else dash.url("schedules"),
    }
    return dash.render(request, "schedule_form.html", context, status=status, now=now)


def writable(request: Request) -> None:
    """Read-only users get no form (403), as they get no action buttons."""
    if read_only(request):
        raise Forbidden("read-only users cannot change anything")


async def new_schedule(request: Request, dash: Dashboard) -> Response:
    writable(request)
    ops = ops_of(request)
    return schedule_form(request, dash, ScheduleForm(), editing=False, now=ops.clock.now())


async def edit_schedule(request: Request, dash: Dashboard) -> Response:
    writable(request)
    ops = ops_of(request)
    found = await ops.schedule(schedule_name_param(request))
    form = ScheduleForm.of(found)
    return schedule_form(request, dash, form, editing=True, now=ops.clock.now())


# ---------------------------------------------------------------- workers


def _worker_state(w: WorkerInfo) -> str:
    if w.stopping:
        return "stopping"
    return "alive" if w.alive else "gone"


async def workers(request: Request, dash: Dashboard) -> Response:
    ops = ops_of(request)
    found = await ops.workers()
    running = await ops.worker_jobs([w.id for w in found])
    rows = [{"worker": w, "state": _worker_state(w), "jobs": running.get(w.id, ())} for w in found]
    context = {"nav": "workers", "rows": rows, "alive": sum(1 for w in found if w.alive)}
    return dash.render(request, "workers.html", context, now=ops.clock.now())


# ---------------------------------------------------------------- audit


def _audit_row(entry: Any) -> dict[str, Any]:
    detail = dict(entry.detail or {})
    ids = detail.pop("jobs", None)
    jobs = [str(i) for i in ids] if isinstance(ids, list) else []
    shown = [
        (str(key), value if isinstance(value, str) else fmt.compact_json(value, 300))
        for key, value in fmt.mask_secrets(detail).items()
        if value is not None and key != "jobs_truncated"
    ]
    return {"entry": entry, "jobs": jobs[:10], "more": max(0, len(jobs) - 10), "detail": shown}


async def audit(request: Request, dash: Dashboard) -> Response:
    ops = ops_of(request)
    entries = await ops.audit_log(AUDIT_LIMIT)
    context = {"nav": "audit", "rows": [_audit_row(e) for e in entries]}
    return dash.render(request, "audit.html", context, now=ops.clock.now())


# ---------------------------------------------------------------- static files


async def static(request: Request, dash: Dashboard) -> Response:
    name = str(request.path_params["name"])
    media = STATIC_FILES.get(name)
    if media is None:
        raise NotFound(f"no dashboard file {name[:80]!r}")
    body = (data_path("templates") / "dashboard" / "static" / name).read_bytes()
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
    return Response(body, media_type=media, headers=headers)


async def not_found(request: Request, dash: Dashboard) -> Response:
    raise NotFound(f"no dashboard page at {request.url.path[:200]}")
