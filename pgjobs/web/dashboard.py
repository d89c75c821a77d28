"""The dashboard mounted at JOBS_DASHBOARD_PATH.

This is a minimal server-rendered overview (queue counts and health) so that
`GET /dashboard` works; the full dashboard replaces `routes()` with its own pages.
Authentication is applied by pgjobs.web.auth before any route here runs.
"""

from __future__ import annotations

from html import escape

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from pgjobs import __version__
from pgjobs.config import Settings
from pgjobs.ops import Ops, QueueStats

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
COLUMNS = ("waiting", "active", "delayed", "paused", "completed", "failed", "health_score")


def routes(settings: Settings) -> list[BaseRoute]:
    return [Route(settings.dashboard_path, overview, methods=["GET"])]


async def overview(request: Request) -> Response:
    ops: Ops = request.app.state.ops
    report = await ops.stats(hours=1)
    rows = "\n".join(_row(q) for q in report.queues)
    head = "".join(f"<th>{escape(c.replace('_', ' '))}</th>" for c in ("queue", *COLUMNS))
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pgjobs</title></head>
<body>
<h1>pgjobs {escape(__version__)}</h1>
<p>{report.workers} live worker(s)</p>
<table>
<thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body></html>
"""
    return HTMLResponse(html, headers=SECURITY_HEADERS)


def _row(queue: QueueStats) -> str:
    cells = "".join(f"<td>{escape(str(getattr(queue, c)))}</td>" for c in COLUMNS)
    paused = " (paused)" if queue.is_paused else ""
    return f"<tr><th>{escape(queue.name)}{paused}</th>{cells}</tr>"
