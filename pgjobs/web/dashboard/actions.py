"""The dashboard's actions (POST handlers). Each one passes the role, origin and CSRF
checks (security.checked_form), calls one operation of pgjobs.ops with the user as the
actor (so it lands in job_audit), and redirects back with a notice (303 See Other)."""

from __future__ import annotations

from uuid import UUID

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pgjobs.errors import Conflict, JobNotFound, ValidationError
from pgjobs.ops import Ops
from pgjobs.redact import mask_text
from pgjobs.validation import MAX_BULK
from pgjobs.web.dashboard.forms import ScheduleForm
from pgjobs.web.dashboard.pages import job_id, queue_name, schedule_form
from pgjobs.web.dashboard.render import PAGE_HEADERS, Dashboard
from pgjobs.web.dashboard.security import checked_fields, checked_form, user_of
from pgjobs.web.requests import schedule_name_param
from pgjobs.web.state import ops_of


def actor(request: Request) -> str:
    return f"dashboard:{user_of(request)}"


def back(url: str) -> Response:
    return RedirectResponse(url, status_code=303, headers=PAGE_HEADERS)


# ---------------------------------------------------------------- queue


async def pause_queue(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    name = queue_name(request)
    await ops_of(request).pause(name, actor=actor(request))
    return back(dash.url("queues", name, done="pause"))


async def resume_queue(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    name = queue_name(request)
    await ops_of(request).resume(name, actor=actor(request))
    return back(dash.url("queues", name, done="resume"))


async def retry_failed(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    name = queue_name(request)
    report = await ops_of(request).retry(queue=name, limit=MAX_BULK, actor=actor(request))
    return back(dash.url("queues", name, status="failed", done="retry", n=report.count))


async def promote_delayed(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    name = queue_name(request)
    promoted = await ops_of(request).promote(queue=name, actor=actor(request))
    return back(dash.url("queues", name, status="delayed", done="promote", n=len(promoted)))


async def clean_completed(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    name = queue_name(request)
    deleted = await ops_of(request).clean_queue(name, actor=actor(request))
    return back(dash.url("queues", name, status="completed", done="clean", n=deleted))


# ---------------------------------------------------------------- job


async def retry_job(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    job = await ops_of(request).retry_job(job_id(request), actor=actor(request))
    return back(dash.url("jobs", job.id, done="retry", n=1))


async def cancel_job(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    job = await ops_of(request).cancel_job(job_id(request), actor=actor(request))
    return back(dash.url("jobs", job.id, done="cancel"))


async def promote_job(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    ops = ops_of(request)
    jid = job_id(request)
    job = await ops.get_job(jid)
    if job.status != "delayed":
        raise Conflict(f"job {jid} is {job.status}; only delayed jobs can be promoted")
    promoted = await ops.promote(ids=[jid], actor=actor(request))
    return back(dash.url("jobs", jid, done="promote", n=len(promoted)))


async def delete_job(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    ops = ops_of(request)
    jid = job_id(request)
    job = await ops.get_job(jid)
    await ops.delete_job(jid, actor=actor(request))
    return back(dash.url("queues", job.queue, done="delete"))


async def bulk_jobs(request: Request, dash: Dashboard) -> Response:
    """Retry, cancel, delete or promote the jobs whose rows were checked; back to the
    list they were checked on (a queue's tab or a search), with what was done."""
    fields = await checked_fields(request, dash.signer, dash.allowed_hosts)
    action = (fields.get("action") or [""])[0]
    ids = fields.get("id", [])
    if not ids:
        raise ValidationError("select at least one job", field="ids")
    report = await ops_of(request).bulk(action, ids, actor=actor(request))
    done = {
        "done": f"bulk-{action}",
        "n": len(report.applied),
        "skip": ",".join(f"{reason}:{n}" for reason, n in report.skipped) or None,
    }
    search = (fields.get("q") or [""])[0]
    queue = (fields.get("queue") or [""])[0]
    if search:
        return back(dash.url("search", q=search, **done))
    if queue:
        status = (fields.get("status") or [""])[0] or None
        return back(dash.url("queues", queue, status=status, **done))
    return back(dash.url(**done))


# ---------------------------------------------------------------- failures


async def retry_group(request: Request, dash: Dashboard) -> Response:
    form = await checked_form(request, dash.signer, dash.allowed_hosts)
    if "type" not in form or "error_line" not in form:
        raise ValidationError("retrying a failure group needs its type and error line")
    ops = ops_of(request)
    error_line = await stored_error_line(ops, form)
    report = await ops.retry(
        type=form["type"], error_line=error_line, limit=MAX_BULK, actor=actor(request)
    )
    hours = form.get("hours") if form.get("hours") in ("1", "24", "168") else None
    return back(dash.url("failures", hours=hours, done="retry", n=report.count))


async def stored_error_line(ops: Ops, form: dict[str, str]) -> str:
    """The error line of the group to retry as the jobs hold it. The page shows and
    posts it with its secrets masked, which matches no job; the group's sample job,
    posted along, holds it whole. A sample that no longer shows that line (retried and
    failed otherwise, deleted) leaves the posted line, so nothing else is retried."""
    shown = form["error_line"]
    try:
        sample = await ops.get_job(UUID(form.get("sample", "")))
    except (ValueError, JobNotFound):
        return shown
    stored = (sample.last_error or "").split("\n", 1)[0]
    if sample.type == form["type"] and sample.status == "failed" and mask_text(stored) == shown:
        return stored
    return shown


# ---------------------------------------------------------------- schedules


async def enable_schedule(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    changes = {"enabled": True}
    await ops_of(request).update_schedule(
        schedule_name_param(request), changes, actor=actor(request)
    )
    return back(dash.url("schedules", done="enable"))


async def disable_schedule(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    changes = {"enabled": False}
    await ops_of(request).update_schedule(
        schedule_name_param(request), changes, actor=actor(request)
    )
    return back(dash.url("schedules", done="disable"))


async def delete_schedule(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    await ops_of(request).delete_schedule(schedule_name_param(request), actor=actor(request))
    return back(dash.url("schedules", done="schedule-delete"))


async def run_schedule(request: Request, dash: Dashboard) -> Response:
    await checked_form(request, dash.signer, dash.allowed_hosts)
    name = schedule_name_param(request)
    await ops_of(request).run_schedule_now(name, actor=actor(request))
    return back(dash.url("schedules", done="schedule-run"))


async def create_schedule(request: Request, dash: Dashboard) -> Response:
    """Store the posted schedule, or show the form again with the error (nothing is
    stored then: 422 for a bad field, 409 for a name already taken)."""
    posted = ScheduleForm.posted(await checked_form(request, dash.signer, dash.allowed_hosts))
    try:
        await ops_of(request).create_schedule(posted.fields(), actor=actor(request))
    except (ValidationError, Conflict) as exc:
        status = 409 if isinstance(exc, Conflict) else 422
        return schedule_form(request, dash, posted.failed(exc), editing=False, status=status)
    return back(dash.url("schedules", done="schedule-create"))


async def update_schedule(request: Request, dash: Dashboard) -> Response:
    """Save the fields the posted form changes; the form comes back with the error
    when they cannot be stored (422, nothing changed)."""
    form = await checked_form(request, dash.signer, dash.allowed_hosts)
    ops = ops_of(request)
    current = await ops.schedule(schedule_name_param(request))
    posted = ScheduleForm.posted(form, name=current.name)
    try:
        changes = posted.changes(current)
        if not changes:
            return back(dash.url("schedules", done="schedule-same"))
        await ops.update_schedule(current.name, changes, actor=actor(request))
    except ValidationError as exc:
        return schedule_form(request, dash, posted.failed(exc), editing=True, status=422)
    return back(dash.url("schedules", done="schedule-update"))
