"""The handlers behind `pgjobs demo`, as a small example of a pgjobs application.

`pgjobs demo` runs its workers on a queue of their own, `demo`, and sends every sample
job there; run another worker for them with::

    pgjobs worker demo --app pgjobs.examples.demo_app:app

The built-in types (send-email, http-request, file-cleanup, ...) are registered too.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pgjobs

# Settings() holds the defaults only: a worker that loads this app gives it the
# settings of its own process (environment and .env), so importing reads nothing.
app = pgjobs.App(pgjobs.Settings())

RESIZE_STEPS = ("decoding", "resizing", "sharpening", "encoding", "storing")


@app.handler("resize-image")
async def resize_image(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Pretend to make a thumbnail, reporting progress at each step (async handler)."""
    path = str(payload.get("path", "image.png"))
    width = int(payload.get("width", 320))
    for index, step in enumerate(RESIZE_STEPS, start=1):
        await asyncio.sleep(float(payload.get("step_seconds", 0.4)))
        await ctx.progress(100 * index / len(RESIZE_STEPS), step)
    stem, _, extension = path.rpartition(".")
    return {
        "source": path,
        "thumbnail": f"{stem or path}-{width}w.{extension or 'png'}",
        "width": width,
        "checksum": hashlib.sha256(f"{path}:{width}".encode()).hexdigest()[:12],
    }


@app.handler("flaky")
def flaky(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Fail the first attempt, succeed on the retry (a plain `def` handler, run in a
    thread): shows a failure recorded in the job's history and the backoff before retry."""
    failures = int(payload.get("fail_times", 1))
    if ctx.attempt <= failures:
        raise RuntimeError(f"simulated failure on attempt {ctx.attempt} of {ctx.max_attempts}")
    ctx.progress_sync(100, "succeeded after retry")
    return {"succeeded_on_attempt": ctx.attempt}
