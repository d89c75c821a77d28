"""Wake-ups: LISTEN/NOTIFY on a dedicated connection.

Wake-ups are hints; the worker's poll is the guarantee. The listener therefore never
gives up: after any error it logs one line, waits, reconnects and LISTENs again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from uuid import UUID

import psycopg

from pgjobs.backoff import ReconnectDelay
from pgjobs.db import connect_async
from pgjobs.errors import ServiceUnavailable
from pgjobs.queries import query

log = logging.getLogger("pgjobs.wakeup")

JOBS_CHANNEL = "pgjobs_jobs"
CANCEL_CHANNEL = "pgjobs_cancel"
DELAYED_CHANNEL = "pgjobs_delayed"


class Listener:
    """Delivers NOTIFY payloads to callbacks: a queue got jobs, a job is to be cancelled,
    a delayed job may be due earlier than planned."""

    def __init__(
        self,
        url: str,
        owner: str,
        *,
        on_jobs: Callable[[str], None],
        on_cancel: Callable[[UUID], None],
        on_delayed: Callable[[], None],
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._url = url
        self._owner = owner
        self._on_jobs = on_jobs
        self._on_cancel = on_cancel
        self._on_delayed = on_delayed
        self._on_reconnect = on_reconnect
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pgjobs-listener")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            # The loop checks the flag at least every `_window` seconds.
            try:
                await asyncio.wait_for(self._task, 5)
            except TimeoutError:
                self._task.cancel()

    _window = 0.5

    async def _run(self) -> None:
        delay = ReconnectDelay()
        first = True
        while not self._stopping:
            try:
                conn = await connect_async(self._url, "listen", self._owner)
            except ServiceUnavailable as exc:
                log.warning("wake-up listener cannot connect (%s); polling meanwhile", exc)
                await asyncio.sleep(delay.next())
                continue
            try:
                await conn.execute(query("listen_channels"))
                delay.reset()
                self.connected.set()
                if not first and self._on_reconnect is not None:
                    # Notifications sent while we were away are lost: look once.
                    self._on_reconnect()
                first = False
                while not self._stopping:
                    # A bounded window, never `break` inside notifies(): psycopg then
                    # leaves the generator running and closing the connection hangs.
                    async for notify in conn.notifies(timeout=self._window):
                        self._dispatch(notify.channel, notify.payload)
            except (psycopg.Error, OSError) as exc:
                self.connected.clear()
                if not self._stopping:
                    log.warning("wake-up listener lost its connection (%s); reconnecting", exc)
                    await asyncio.sleep(delay.next())
            finally:
                self.connected.clear()
                await conn.close()

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == JOBS_CHANNEL:
            self._on_jobs(payload)
        elif channel == CANCEL_CHANNEL:
            try:
                self._on_cancel(UUID(payload))
            except ValueError:
                log.debug("ignoring malformed cancel notification %r", payload)
        elif channel == DELAYED_CHANNEL:
            self._on_delayed()
