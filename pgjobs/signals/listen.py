"""The LISTEN loop that wake-ups (`wakeup.Listener`) and job events
(`events.PgEventListener`) share: a dedicated connection that LISTENs, hands each
notification on, and after any error logs one line, waits and reconnects.

Notifications are hints; their consumers always have a poll behind them, so the loop
never gives up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import psycopg

from pgjobs.backoff import ReconnectDelay
from pgjobs.db import connect_async, describe_connect_retry
from pgjobs.errors import ServiceUnavailable


class NotifyListener:
    """LISTEN on a dedicated connection that reconnects after any error.

    Subclasses say what to run on each new connection (`_setup`, its LISTEN statements)
    and what to do with a notification (`_dispatch`). `connected` is set while the
    connection is up; `on_reconnect` runs after every reconnection but the first
    (notifications sent while the connection was down are lost: look once)."""

    # The loop checks the stop flag at least this often (seconds).
    _window = 0.5

    def __init__(
        self,
        url: str,
        owner: str,
        *,
        log: logging.Logger,
        what: str,
        while_down: str = "",
        task_name: str,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._url = url
        self._owner = owner
        self._log = log
        self._what = what
        self._while_down = while_down
        self._task_name = task_name
        self._on_reconnect = on_reconnect
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._task_name)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except TimeoutError:
                self._task.cancel()

    async def _setup(self, conn: psycopg.AsyncConnection[Any]) -> None:
        raise NotImplementedError

    def _dispatch(self, notify: psycopg.Notify) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        delay = ReconnectDelay()
        first = True
        while not self._stopping:
            try:
                conn = await connect_async(self._url, "listen", self._owner)
            except ServiceUnavailable as exc:
                pause = delay.next()
                problem = describe_connect_retry(
                    self._url, exc.__cause__ or exc, delay.attempts, pause
                )
                self._log.warning("%s: %s%s", self._what, problem, self._while_down)
                await asyncio.sleep(pause)
                continue
            try:
                await self._setup(conn)
                delay.reset()
                self.connected.set()
                if not first and self._on_reconnect is not None:
                    self._on_reconnect()
                first = False
                while not self._stopping:
                    # A bounded window, never `break` inside notifies(): psycopg then
                    # leaves the generator running and closing the connection hangs.
                    async for notify in conn.notifies(timeout=self._window):
                        self._dispatch(notify)
            except (psycopg.Error, OSError) as exc:
                self.connected.clear()
                if not self._stopping:
                    self._log.warning("%s lost its connection (%s); reconnecting", self._what, exc)
                    await asyncio.sleep(delay.next())
            finally:
                self.connected.clear()
                await conn.close()
