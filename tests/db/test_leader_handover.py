"""A maintenance leader cut off from the database mid-round (its host's link down: the
server sees an idle session in an open transaction, not a closed connection) hands its
task over within the round's idle timeout, not the session's minute."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from pgjobs.app import App
from pgjobs.clock import Clock
from pgjobs.engine.maintenance import tasks
from pgjobs.engine.maintenance.tasks import run_round
from tests.helpers import wait_until_async

pytestmark = pytest.mark.anyio

LOCK_KEY = 7423519999


class SilentLeader:
    """A round that takes the lock and then sends nothing more, as a partitioned host."""

    name = "silent"
    lock_key = LOCK_KEY

    def __init__(self) -> None:
        self.leading = asyncio.Event()

    async def run(self, conn: psycopg.AsyncConnection[Any], clock: Clock) -> float:
        self.leading.set()
        await asyncio.sleep(60)
        return 1.0


class QuickRound:
    name = "quick"
    lock_key = LOCK_KEY

    async def run(self, conn: psycopg.AsyncConnection[Any], clock: Clock) -> float:
        return 1.0


async def test_a_silent_leader_hands_its_task_over(
    app: App, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "LEADER_IDLE_TIMEOUT_MS", 500)
    silent = SilentLeader()
    async with (
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as cut_off,
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as other,
    ):
        leading = asyncio.create_task(run_round(cut_off, silent, app.clock))
        await asyncio.wait_for(silent.leading.wait(), 10)
        assert await run_round(other, QuickRound(), app.clock) is None  # still led
        began = time.monotonic()

        async def took_over() -> bool:
            return await run_round(other, QuickRound(), app.clock) is not None

        await wait_until_async(took_over, timeout=10, interval=0.1, message="a new leader")
        assert time.monotonic() - began < 5
        leading.cancel()
        with pytest.raises((asyncio.CancelledError, psycopg.Error)):
            await leading
