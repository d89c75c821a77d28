"""Stack traces on the job page, from a real failing handler run by a real worker:
the handler's frames stay in view, pgjobs' own frames are folded behind a toggle."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

import pgjobs
from pgjobs.app import App
from pgjobs.config import Settings
from pgjobs.web import create_app
from pgjobs.web.dashboard import stacks

pytestmark = pytest.mark.anyio


class Blocks(HTMLParser):
    """The text of each part of the first failure's stack: (folded, summary, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[tuple[bool, str, str]] = []
        self._depth = 0  # inside <div class="stack">
        self._folded = False
        self._in: str | None = None
        self._summary = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "div" and a.get("class") == "stack":
            self._depth = 1
        elif self._depth and tag == "details":
            self._folded, self._summary = True, ""
        elif self._depth and tag in ("summary", "pre"):
            self._in = tag
            if tag == "pre":
                self.parts.append((self._folded, self._summary, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "details":
            self._folded = False
        elif tag in ("summary", "pre"):
            self._in = None
        elif tag == "div" and self._depth:
            self._depth = 0

    def handle_data(self, data: str) -> None:
        if self._in == "summary":
            self._summary += data
        elif self._in == "pre":
            folded, summary, text = self.parts[-1]
            self.parts[-1] = (folded, summary, text + data)


def deep_in_user_code(n: int) -> None:
    if n == 0:
        raise LookupError("customer 42 has no invoice <b>draft</b>")
    deep_in_user_code(n - 1)


async def test_job_page_folds_pgjobs_frames_of_a_real_failure(app: App, settings: Settings) -> None:
    @app.handler("invoice")
    async def invoice(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        deep_in_user_code(2)

    job = await app.create("invoice", {}, attempts=1)
    await app.drain()
    failed = await app.get(job.id)
    assert failed.status == "failed"
    stored = failed.failures[0].error_stack or ""
    assert "/pgjobs/engine/" in stored and "deep_in_user_code" in stored

    web = create_app(settings.replace(dashboard_user="admin", dashboard_password="pw"))
    async with web.router.lifespan_context(web):
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", auth=("admin", "pw")
        ) as client:
            response = await client.get(f"/dashboard/jobs/{job.id}")
    assert response.status_code == 200
    assert "<b>draft</b>" not in response.text  # escaped like everything else
    page = Blocks()
    page.feed(response.text)
    folded = [(summary, text) for is_folded, summary, text in page.parts if is_folded]
    shown = "".join(text for is_folded, _, text in page.parts if not is_folded)
    # Nothing of the stored trace is lost or reordered: the parts add up to it.
    assert "\n".join(text for _, _, text in page.parts) == stored
    # The handler's frames and the exception are in view; pgjobs' frames are folded.
    assert shown.startswith("Traceback (most recent call last):")
    assert shown.count("in deep_in_user_code") == 3 and "in invoice" in shown
    assert shown.rstrip().endswith("LookupError: customer 42 has no invoice <b>draft</b>")
    assert stacks.PACKAGE not in shown
    assert folded, page.parts
    for summary, text in folded:
        frames = text.count('  File "')
        assert summary.startswith(f"{frames} pgjobs") and summary.endswith(
            "frame" if frames == 1 else "frames"
        )
        assert stacks.PACKAGE in text and "deep_in_user_code" not in text
