"""The dashboard: server-rendered pages at JOBS_DASHBOARD_PATH (default /dashboard).

Modules: `pages` (GET handlers), `actions` (POST handlers), `render` (templates and
URLs), `security` (CSRF, origin and role checks; the headers are pgjobs.web.headers),
`format` and `charts` (pure formatting helpers), `history` (the throughput history
cache). The route table is below, in one place. Authentication happens before any of
it, in pgjobs.web.auth.
The web app's lifespan calls `Dashboard.start` so the throughput history is counted in
the background before the first page asks for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pgjobs.errors import PgJobsError
from pgjobs.replica import primary_reads
from pgjobs.web.dashboard import actions, pages
from pgjobs.web.dashboard.render import Dashboard
from pgjobs.web.errors import STATUS_OF, HTTPError

__all__ = ["Dashboard", "routes"]

Handler = Callable[[Request, Dashboard], Awaitable[Response]]


def routes(dash: Dashboard) -> list[BaseRoute]:
    """Every dashboard route, mounted at JOBS_DASHBOARD_PATH."""
    base = dash.base

    def get(path: str, handler: Handler) -> Route:
        return Route(base + path or "/", _endpoint(dash, handler), methods=["GET"])

    def post(path: str, handler: Handler) -> Route:
        return Route(base + path, _endpoint(dash, handler), methods=["POST"])

    table: list[BaseRoute] = [
        get("", pages.overview),
        get("/counts.json", pages.counts),
        get("/static/{name}", pages.static),
        get("/queues/{name}", pages.queue),
        post("/queues/{name}/pause", actions.pause_queue),
        post("/queues/{name}/resume", actions.resume_queue),
        post("/queues/{name}/retry-failed", actions.retry_failed),
        post("/queues/{name}/promote-delayed", actions.promote_delayed),
        post("/queues/{name}/clean-completed", actions.clean_completed),
        get("/search", pages.search),
        post("/bulk", actions.bulk_jobs),
        get("/jobs/{id}", pages.job),
        post("/jobs/{id}/retry", actions.retry_job),
        post("/jobs/{id}/cancel", actions.cancel_job),
        post("/jobs/{id}/promote", actions.promote_job),
        post("/jobs/{id}/delete", actions.delete_job),
        get("/failures", pages.failures),
        post("/failures/retry", actions.retry_group),
        get("/schedules", pages.schedules),
        post("/schedules", actions.create_schedule),
        get("/schedules/new", pages.new_schedule),
        get("/schedules/{name}/edit", pages.edit_schedule),
        post("/schedules/{name}/edit", actions.update_schedule),
        post("/schedules/{name}/run", actions.run_schedule),
        post("/schedules/{name}/enable", actions.enable_schedule),
        post("/schedules/{name}/disable", actions.disable_schedule),
        post("/schedules/{name}/delete", actions.delete_schedule),
        get("/workers", pages.workers),
        get("/audit", pages.audit),
    ]
    if base:
        # Unknown pages under the dashboard get an HTML 404 with the dashboard's headers
        # (mounted at /, unknown paths stay the API's JSON 404s).
        table.append(get("/{rest:path}", pages.not_found))
    return table


def _endpoint(dash: Dashboard, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            if "done" in request.query_params:
                # The page an action redirects to shows its outcome: read the primary,
                # which holds it, rather than a replica that may not have replayed it.
                with primary_reads():
                    return await handler(request, dash)
            return await handler(request, dash)
        except HTTPError as exc:
            return _error(dash, request, exc.status, str(exc))
        except PgJobsError as exc:
            status = next((s for cls, s in STATUS_OF if isinstance(exc, cls)), 500)
            if status >= 500:
                raise  # logged and answered by pgjobs.web.errors
            return _error(dash, request, status, str(exc))

    return endpoint


def _error(dash: Dashboard, request: Request, status: int, message: str) -> Response:
    context = {"nav": "", "status": status, "message": " ".join(message.split())[:1000]}
    return dash.render(request, "error.html", context, status=status)
