"""Handlers for the dashboard's browser test: jobs that complete, fail with a given
message, or keep running until they are cancelled or the worker stops."""

from __future__ import annotations

import asyncio
from typing import Any

import pgjobs

app = pgjobs.App(builtin_types=False)


@app.handler("ok")
async def ok(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    await ctx.progress(100)
    return {"ok": True, "echo": payload}


@app.handler("fail")
async def fail(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
    raise RuntimeError(str(payload.get("message", "failed on purpose")))


@app.handler("slow")
async def slow(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
    await ctx.progress(30, "working")
    await asyncio.sleep(3600)
