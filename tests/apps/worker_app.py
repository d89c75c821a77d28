"""Handlers used by tests that run workers as separate processes."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pgjobs

app = pgjobs.App(builtin_types=False)


@app.handler("noop")
async def noop(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


@app.handler("sleep")
async def sleep(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(payload.get("ms", 100) / 1000)
    return {"slept_ms": payload.get("ms", 100), "pid": os.getpid()}


@app.handler("sync-sleep")
def sync_sleep(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    time.sleep(payload.get("ms", 100) / 1000)
    return {"slept_ms": payload.get("ms", 100)}


@app.handler("crash")
async def crash(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
    os._exit(17)  # a poison job: takes its worker process down every time
