"""The `Dashboard` object the handlers share (settings, CSRF signer, throughput history,
templates) and rendering: the Jinja2 environment (autoescape on for everything), URL
helpers, and the one method that turns a template into a response with the security
headers.

Templates live in the top-level `templates/dashboard/` folder, shipped in the wheel
(found with pgjobs.resources.data_path). They receive plain data and the formatting
helpers of pgjobs.web.dashboard.format as filters; nothing in them is marked safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse

from pgjobs._version import __version__
from pgjobs.config import Settings
from pgjobs.models import priority_name
from pgjobs.ops import Ops
from pgjobs.ops.service import EXACT_COUNT_LIMIT
from pgjobs.replica import current_reads
from pgjobs.resources import data_path
from pgjobs.web.dashboard import format as fmt
from pgjobs.web.dashboard.history import HistoryCache
from pgjobs.web.dashboard.security import (
    CsrfSigner,
    browser_secret,
    new_browser_secret,
    read_only,
    set_browser_secret,
    user_of,
)
from pgjobs.web.headers import SECURITY_HEADERS
from pgjobs.web.hosts import allowed_hosts

STATIC_FILES = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PAGE_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-store"}


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(data_path("templates"))),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        number=fmt.number,
        percent=fmt.percent,
        duration_ms=fmt.duration_ms,
        timestamp=fmt.timestamp,
        iso=fmt.iso,
        short_id=fmt.short_id,
        truncate_text=fmt.truncate,
        first_line=fmt.first_line,
        byte_size=fmt.byte_size,
    )
    env.globals.update(
        between=fmt.between,
        relative=fmt.relative,
        rate_per_minute=fmt.rate_per_minute,
        cron_in_words=fmt.cron_in_words,
        preview=fmt.preview,
        priority_name=priority_name,
        version=__version__,
    )
    return env


@dataclass
class Dashboard:
    """What the dashboard's handlers share for the life of the server process."""

    settings: Settings
    signer: CsrfSigner
    history: HistoryCache = field(default_factory=HistoryCache)
    templates: Environment = field(default_factory=environment)

    @classmethod
    def create(cls, settings: Settings) -> Dashboard:
        return cls(settings=settings, signer=CsrfSigner(settings.dashboard_secret))

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        return allowed_hosts(self.settings)

    def start(self, ops: Ops) -> None:
        """Begin counting the throughput history (a day of finished jobs) now."""
        self.history.warm_up(ops)

    async def stop(self) -> None:
        await self.history.close()

    @property
    def base(self) -> str:
        """The mount path without a trailing slash ("" when mounted at /)."""
        path = self.settings.dashboard_path
        return "" if path == "/" else path

    def url(self, *segments: Any, **params: Any) -> str:
        """A dashboard URL: each segment percent-encoded whole (a name can never add a
        path level or a scheme), then the non-empty query parameters."""
        path = self.base + "".join("/" + quote(str(s), safe="") for s in segments)
        query = {k: str(v) for k, v in params.items() if v is not None and v != ""}
        return (path or "/") + ("?" + urlencode(query) if query else "")

    def static_url(self, name: str) -> str:
        return self.url("static", name, v=__version__)

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        *,
        status: int = 200,
        now: datetime | None = None,
    ) -> HTMLResponse:
        user = user_of(request)
        browser = browser_secret(request)
        fresh = browser is None
        if browser is None:
            browser = new_browser_secret()
        values = {
            "dashboard": self,
            "url": self.url,
            "static_url": self.static_url,
            "user": user,
            "read_only": read_only(request),
            "csrf": self.signer.token(user, browser),
            "refresh_ms": self.settings.dashboard_refresh_ms,
            "exact_limit": EXACT_COUNT_LIMIT,
            "now": now or datetime.now(UTC),
            "read_note": _read_note(),
            **context,
        }
        html = self.templates.get_template(f"dashboard/{template}").render(values)
        response = HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)
        if fresh:
            set_browser_secret(response, request, browser, self.base or "/")
        return response


def _read_note() -> str | None:
    """Where this page's reads ran, when a read replica is configured."""
    reads = current_reads()
    return None if reads is None else reads.note
