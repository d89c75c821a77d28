"""Wake-ups: LISTEN/NOTIFY on a dedicated connection, and the same over Redis pub/sub.

Wake-ups are hints; the worker's poll is the guarantee. The listener therefore never
gives up: after any error it logs one line, waits, reconnects and LISTENs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Collection
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from pgjobs.queries import query
from pgjobs.signals import redis_client as cache
from pgjobs.signals.listen import NotifyListener

log = logging.getLogger("pgjobs.wakeup")

JOBS_CHANNEL = "pgjobs_jobs"
CANCEL_CHANNEL = "pgjobs_cancel"
DELAYED_CHANNEL = "pgjobs_delayed"


class Listener(NotifyListener):
    """Delivers NOTIFY payloads to callbacks: a queue got jobs, a worker should look for
    jobs to cancel, a delayed job may be due earlier than planned. Any database login
    can send these: the callbacks treat them as hints to look, never as orders."""

    def __init__(
        self,
        url: str,
        owner: str,
        *,
        on_jobs: Callable[[str], None],
        on_cancel: Callable[[str], None],
        on_delayed: Callable[[], None],
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            url,
            owner,
            log=log,
            what="wake-up listener",
            while_down="; polling meanwhile",
            task_name="pgjobs-listener",
            on_reconnect=on_reconnect,
        )
        self._on_jobs = on_jobs
        self._on_cancel = on_cancel
        self._on_delayed = on_delayed

    async def _setup(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(query("listen_channels"))

    def _dispatch(self, notify: psycopg.Notify) -> None:
        if notify.channel == JOBS_CHANNEL:
            self._on_jobs(notify.payload)
        elif notify.channel == CANCEL_CHANNEL:
            self._on_cancel(notify.payload)
        elif notify.channel == DELAYED_CHANNEL:
            self._on_delayed()


# ---------------------------------------------------------------- Redis pub/sub
#
# The same hints over Redis, for workers that cannot LISTEN (PgBouncer in transaction
# pooling mode hands each statement to any server connection, so a LISTEN is lost).
# Producers publish only after their enqueue committed, so a worker that wakes finds the
# jobs. The message is a JSON list of queue names on `pgjobs:{<database>}:jobs`.


class RedisWakeups:
    """Subscribes a worker to the Redis wake-up channel of its database."""

    def __init__(
        self,
        url: str,
        *,
        on_jobs: Callable[[str], None],
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._url = url
        self._on_jobs = on_jobs
        self._on_reconnect = on_reconnect
        self._subscriber: cache.Subscriber | None = None
        self.connected = asyncio.Event()

    async def start(self, pool: AsyncConnectionPool) -> None:
        async with pool.connection() as conn:
            channel = cache.Keys(conn.info.dbname).jobs_channel
        self._subscriber = cache.Subscriber(
            self._url,
            [channel],
            self._message,
            on_reconnect=self._on_reconnect,
            name="pgjobs-wakeups-redis",
        )
        self.connected = self._subscriber.connected
        self._subscriber.start()

    async def stop(self) -> None:
        if self._subscriber is not None:
            await self._subscriber.stop()

    def _message(self, _channel: str, data: bytes) -> None:
        try:
            queues = json.loads(data)
        except ValueError:
            log.debug("ignoring malformed wake-up %r", data[:200])
            return
        for queue in queues if isinstance(queues, list) else ():
            if isinstance(queue, str):
                self._on_jobs(queue)


class WakeupPublisher:
    """The producer's side: after an enqueue commits, publish the queues that got jobs.

    Failures are logged and skipped (NOTIFY and the workers' poll still wake them); a
    Breaker keeps a dead Redis from delaying every enqueue by a timeout.

    BEST_EFFORT: any exception counts as a failure, not only Redis and network errors.
    The jobs are committed by then; a server that answers nonsense makes redis-py
    raise AttributeError or ValueError during its handshake, and an exception here
    would turn a created job into an error response that a client retries."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._breaker = cache.Breaker("wake-ups")
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None
        self._sync: Any = None

    async def publish(self, database: str, queues: Collection[str]) -> None:
        if not queues or not self._breaker.closed:
            return
        loop = asyncio.get_running_loop()
        try:
            if self._async is None or self._async[0] is not loop:
                self._async = (loop, cache.async_client(self._url))
            await self._async[1].publish(
                cache.Keys(database).jobs_channel, json.dumps(sorted(set(queues)))
            )
            self._breaker.succeeded()
        except Exception as exc:  # not only cache.ERRORS: see BEST_EFFORT
            self._breaker.failed(exc)

    def publish_sync(self, database: str, queues: Collection[str]) -> None:
        if not queues or not self._breaker.closed:
            return
        try:
            if self._sync is None:
                self._sync = cache.sync_client(self._url)
            self._sync.publish(cache.Keys(database).jobs_channel, json.dumps(sorted(set(queues))))
            self._breaker.succeeded()
        except Exception as exc:  # not only cache.ERRORS: see BEST_EFFORT
            self._breaker.failed(exc)

    async def close(self) -> None:
        if self._async is not None:
            loop, client = self._async
            self._async = None
            if loop is asyncio.get_running_loop():
                with contextlib.suppress(*cache.ERRORS):
                    await client.aclose()
        self.close_sync()

    def close_sync(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None
