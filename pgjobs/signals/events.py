"""Job events — `progress`, `completed`, `failed`, `retrying`, `stalled`, `cancelled` —
and the two ways of consuming them: `app.events()` and `app.wait(job_id)`.

An event says which job changed and into what: event, job id, queue, job type, status
(and the percentage of a progress event); never payloads, results or errors.

Publishing. Every event is published only once the change it reports has committed:
- without Redis (or while Redis is down) the statement that makes the change stores it
  in `job_event_batches` and NOTIFYs the batch's id on `pgjobs_events`
  (pgjobs_notify_events), so PostgreSQL delivers it at commit, in commit order. The
  notification carries nothing else: any database login may LISTEN, and only roles
  granted the table can read what happened to which job;
- with Redis, the worker publishes the rows those statements returned on the channel
  `pgjobs:{db}:events`, from one ordered queue per process. A batch Redis refuses goes
  out over NOTIFY instead.

Consuming. One `EventHub` per App subscribes to Redis (when configured) and LISTENs on
`pgjobs_events` (unless JOBS_LISTEN=false, or Settings.listen_url has no server for it),
reads the batches it is told of, and fans
events out to streams and waiters.
Events are hints: a stream misses what was published while its connection was down,
so `wait()` also re-reads the awaited jobs every poll interval and never depends on
an event arriving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from pgjobs.backoff import ReconnectDelay
from pgjobs.config import Settings
from pgjobs.errors import JobFailed, JobNotFound, ServiceUnavailable
from pgjobs.queries import query
from pgjobs.signals import redis_client as cache
from pgjobs.signals.listen import NotifyListener

log = logging.getLogger("pgjobs.events")

EVENT_NAMES = ("progress", "completed", "failed", "retrying", "stalled", "cancelled")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
PUBLISH_BATCH = 500
WATCH_S = 1.0  # how often workers look for event consumers
NOTICE_S = 1.5  # how long a new consumer waits for workers to notice it
CONSUMER_LOCK = 7423510201  # shared advisory lock held by every event consumer
STREAM_BUFFER = 10_000
RECENT_BATCHES = 10_000  # batch ids remembered, so a repeated notification is ignored
WAIT_CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class JobEvent:
    event: str
    id: UUID
    queue: str
    type: str
    status: str
    progress: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event": self.event,
            "id": str(self.id),
            "queue": self.queue,
            "type": self.type,
            "status": self.status,
        }
        if self.progress is not None:
            out["progress"] = self.progress
        return out

    def wire(self) -> list[Any]:
        return [self.event, str(self.id), self.queue, self.type, self.status, self.progress]


def encode(events: Iterable[JobEvent]) -> str:
    """The wire form: a JSON array of [event, id, queue, type, status, progress]
    (the same shape pgjobs_notify_events sends)."""
    return json.dumps([e.wire() for e in events], separators=(",", ":"), ensure_ascii=False)


def decode(data: bytes | str) -> list[JobEvent]:
    """Events from a message; malformed entries are skipped, never raised."""
    try:
        items = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        log.debug("ignoring a malformed event message %r", data[:200])
        return []
    return decode_items(items)


def decode_items(items: Any) -> list[JobEvent]:
    """Events from a decoded JSON array of [event, id, queue, type, status, progress]."""
    out: list[JobEvent] = []
    for item in items if isinstance(items, list) else ():
        try:
            event, job_id, queue, type_, status, progress = item
            out.append(
                JobEvent(
                    str(event),
                    UUID(str(job_id)),
                    str(queue),
                    str(type_),
                    str(status),
                    None if progress is None else int(progress),
                )
            )
        except (TypeError, ValueError):
            log.debug("ignoring a malformed event %r", item)
    return out


# ------------------------------------------------------------------ publishing


Route = Literal["off", "sql", "redis"]


class Publisher:
    """The worker's side: decides where job events go, and publishes those for Redis in
    order, from one task.

    `route()` says, for a statement about to make changes: "sql" (the statement NOTIFYs
    its events itself: no Redis, or Redis is down), "redis" (hand the returned rows to
    `emit()` once it returned) or "off". Events cost the hot path (a NOTIFY per commit
    takes a database-wide lock), so they are only sent while someone consumes them: a
    consumer holds a shared advisory lock on its LISTEN connection or subscribes to the
    Redis channel, and this checks for either every WATCH_S.
    """

    def __init__(self, redis_url: str | None, pool: AsyncConnectionPool) -> None:
        self._url = redis_url
        self._pool = pool
        self._client: Any = None
        self._channel: str | None = None
        self._breaker = cache.Breaker("job events")
        self._buffer: list[JobEvent] = []
        self._has_items = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self.wanted = True  # until the first look says otherwise
        self.published = 0

    def route(self) -> Route:
        if not self.wanted:
            return "off"
        if self._channel is not None and self._breaker.closed:
            return "redis"
        return "sql"

    async def start(self) -> None:
        if self._url is not None:
            try:
                async with self._pool.connection() as conn:
                    self._channel = cache.Keys(conn.info.dbname).events_channel
            except (psycopg.Error, OSError) as exc:
                # Without the database name there is no channel: NOTIFY until restarted.
                log.warning("job events go over NOTIFY only (%s)", exc)
            else:
                self._client = cache.async_client(self._url)
                self._runner = asyncio.create_task(self._run(), name="pgjobs-events")
        self._watcher = asyncio.create_task(self._watch(), name="pgjobs-events-watch")

    def emit(self, events: list[JobEvent]) -> None:
        if events:
            self._buffer.extend(events)
            self._has_items.set()

    async def close(self) -> None:
        self._closing = True
        self._has_items.set()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner, 5)
            except TimeoutError:
                self._runner.cancel()
        if self._client is not None:
            with contextlib.suppress(*cache.ERRORS):
                await self._client.aclose()

    async def _watch(self) -> None:
        while True:
            # On failure keep the last answer; the claim loop reports database trouble.
            with contextlib.suppress(psycopg.Error, OSError):
                self.wanted = await self._consumed()
            await asyncio.sleep(WATCH_S)

    async def _consumed(self) -> bool:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("events_consumed"), consumer_lock())
            row = await cur.fetchone()
        if row is not None and row["consumed"]:
            return True
        if self._client is None or not self._breaker.closed:
            return False
        try:
            counts = await self._client.pubsub_numsub(self._channel)
        except cache.ERRORS as exc:
            self._breaker.failed(exc)
            return self.wanted
        return any(int(n) for _, n in counts)

    async def _run(self) -> None:
        assert self._channel is not None
        while True:
            await self._has_items.wait()
            self._has_items.clear()
            while self._buffer:
                batch = self._buffer[:PUBLISH_BATCH]
                del self._buffer[:PUBLISH_BATCH]
                await self._send(batch)
            if self._closing:
                return

    async def _send(self, batch: list[JobEvent]) -> None:
        if self._breaker.closed:
            try:
                await self._client.publish(self._channel, encode(batch))
                self._breaker.succeeded()
                self.published += len(batch)
                return
            except cache.ERRORS as exc:
                self._breaker.failed(exc)
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    query("notify_job_events"),
                    {"events": [json.dumps(e.wire(), ensure_ascii=False) for e in batch]},
                )
            self.published += len(batch)
        except (psycopg.Error, OSError) as exc:
            log.warning(
                "dropped %d job events: neither Redis nor PostgreSQL took them (%s)",
                len(batch),
                exc,
            )


def consumer_lock() -> dict[str, int]:
    """The advisory lock consumers hold, as pg_locks shows a bigint key."""
    return {
        "key": CONSUMER_LOCK,
        "classid": CONSUMER_LOCK >> 32,
        "objid": CONSUMER_LOCK & 0xFFFFFFFF,
    }


# ------------------------------------------------------------------ consuming


class PgEventListener(NotifyListener):
    """LISTEN pgjobs_events on a dedicated connection that reconnects after any error."""

    def __init__(self, url: str, on_message: Callable[[str], None]) -> None:
        super().__init__(
            url, "events", log=log, what="event listener", task_name="pgjobs-events-listener"
        )
        self._on_message = on_message

    async def _setup(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(query("listen_events"))
        # Held as long as this connection lives: tells workers to send events.
        await conn.execute(query("events_consumer_lock"), consumer_lock())

    def _dispatch(self, notify: psycopg.Notify) -> None:
        self._on_message(notify.payload)


class EventStream:
    """Events as they happen, optionally only of some queues, jobs or event names.

        async with app.events(queues=["emails"]) as stream:
            async for event in stream:
                ...

    Entering returns once the subscriptions are live, so nothing published afterwards is
    missed (as long as the connections stay up). A consumer that falls 10,000 events
    behind is dropped: the iterator raises ServiceUnavailable.
    """

    def __init__(
        self,
        hub: EventHub,
        queues: Collection[str] | None,
        job_ids: Collection[UUID] | None,
        events: Collection[str] | None,
    ) -> None:
        self._hub = hub
        self._queues = frozenset(queues) if queues else None
        self._jobs = frozenset(job_ids) if job_ids else None
        self._events = frozenset(events) if events else None
        # Unbounded: offer() enforces the limit and keeps room for the end marker.
        self._items: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        self._entered = False
        self._closed = False
        self.overflowed = False

    def wants(self, event: JobEvent) -> bool:
        return (
            (self._queues is None or event.queue in self._queues)
            and (self._jobs is None or event.id in self._jobs)
            and (self._events is None or event.event in self._events)
        )

    def offer(self, event: JobEvent) -> None:
        if self.overflowed:
            return
        if self._items.qsize() >= STREAM_BUFFER:
            self.overflowed = True
            self._hub.remove_stream(self)
            self._items.put_nowait(None)  # wakes the consumer to raise
            return
        self._items.put_nowait(event)

    async def __aenter__(self) -> EventStream:
        if not self._entered and not self._closed:
            self._entered = True
            await self._hub.add_stream(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub.remove_stream(self)
            self._items.put_nowait(None)  # ends a consumer waiting in __anext__

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> JobEvent:
        await self.__aenter__()
        item = await self._items.get()
        if item is not None:
            return item
        if self.overflowed:
            raise ServiceUnavailable("event consumer fell 10,000 events behind; subscribe again")
        raise StopAsyncIteration


class RecentBatches:
    """The event batch ids already dispatched. Anyone may NOTIFY a batch id again: a
    repeat, or an id older than everything remembered, is not dispatched twice. Only
    batches that were found are remembered, so announcing ids that do not exist yet
    cannot suppress the real batches later."""

    def __init__(self, size: int = RECENT_BATCHES) -> None:
        self._ids: set[int] = set()
        self._order: deque[int] = deque()
        self._size = size
        self._forgotten_up_to = 0

    def is_new(self, batch: int) -> bool:
        return batch not in self._ids and batch > self._forgotten_up_to

    def remember(self, batch: int) -> None:
        if len(self._order) >= self._size:
            oldest = self._order.popleft()
            self._ids.discard(oldest)
            self._forgotten_up_to = max(self._forgotten_up_to, oldest)
        self._ids.add(batch)
        self._order.append(batch)


class EventSource(Protocol):
    """What the hub needs of its App: settings and a pooled connection."""

    @property
    def settings(self) -> Settings: ...

    def connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...


class EventHub:
    """One subscription per App, fanned out to EventStreams and wait() callers."""

    def __init__(self, app: EventSource) -> None:
        self._app = app
        settings = app.settings
        # Re-reading awaited jobs is one query for all of them: at least every second.
        self._poll = min(settings.poll_interval_ms / 1000, 1.0)
        self._redis: cache.Subscriber | None = None
        self._listener: PgEventListener | None = None
        self._redis_url = settings.redis_url
        # The LISTEN connection also holds the consumer lock (events_consumer_lock): a
        # transaction pooler would leave both behind, so only a direct one has them.
        self._listen_url = settings.listen_url if settings.listen else None
        self._started = False
        self._live_since = 0.0
        self._start_lock = asyncio.Lock()
        self._streams: set[EventStream] = set()
        self._waiters: dict[UUID, list[asyncio.Future[Any]]] = {}
        self._to_check: set[UUID] = set()
        self._check = asyncio.Event()
        self._checker: asyncio.Task[None] | None = None
        self._batches: dict[int, None] = {}  # notified, not read yet, in order
        self._batches_due = asyncio.Event()
        self._recent = RecentBatches()
        self._reader: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- sources

    async def _ensure_started(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            waits = []
            channel = None
            if self._redis_url is not None:
                async with self._app.connection() as conn:  # may raise: start again later
                    channel = cache.Keys(conn.info.dbname).events_channel
            self._started = True
            if channel is not None:
                assert self._redis_url is not None
                self._redis = cache.Subscriber(
                    self._redis_url,
                    [channel],
                    lambda _channel, data: self._dispatch(data),
                    on_reconnect=self._recheck_all,
                    name="pgjobs-events-redis",
                )
                self._redis.start()
                waits.append(self._redis.connected.wait())
            if self._listen_url is not None:
                self._listener = PgEventListener(self._listen_url, self._on_batch)
                self._reader = asyncio.create_task(self._read_batches(), name="pgjobs-events-read")
                self._listener.start()
                waits.append(self._listener.connected.wait())
            self._live_since = time.monotonic()
            if waits:
                # Either source suffices; a source that is down is covered by the other
                # one or, for waiters, by polling.
                _done, pending = await asyncio.wait(
                    [asyncio.ensure_future(w) for w in waits],
                    timeout=5,
                    return_when=asyncio.ALL_COMPLETED,
                )
                for task in pending:
                    task.cancel()

    def _on_batch(self, payload: str) -> None:
        try:
            batch = int(payload)
        except ValueError:
            log.debug("ignoring a malformed event notification %r", payload[:200])
            return
        if self._recent.is_new(batch) and batch not in self._batches:
            self._batches[batch] = None
            self._batches_due.set()

    async def _read_batches(self) -> None:
        """Reads the batches notified so far in one query and dispatches them in the
        order they were notified (commit order)."""
        while True:
            await self._batches_due.wait()
            self._batches_due.clear()
            batches, self._batches = list(self._batches), {}
            if not batches:
                continue
            try:
                async with (
                    self._app.connection() as conn,
                    conn.cursor(row_factory=dict_row) as cur,
                ):
                    await cur.execute(query("read_event_batches"), {"ids": batches})
                    found = {row["id"]: row["events"] for row in await cur.fetchall()}
            except (psycopg.Error, OSError) as exc:
                # Lost to streams, as if the connection had dropped; waiters look again.
                log.warning("could not read %d job event batches (%s)", len(batches), exc)
                self._recheck_all()
                continue
            for batch in batches:
                if batch in found and self._recent.is_new(batch):
                    self._recent.remember(batch)
                    self._dispatch_events(decode_items(found[batch]))

    def _dispatch(self, data: bytes | str) -> None:
        self._dispatch_events(decode(data))

    def _dispatch_events(self, events: list[JobEvent]) -> None:
        for event in events:
            for stream in list(self._streams):
                if stream.wants(event):
                    stream.offer(event)
            if event.id in self._waiters and event.status in TERMINAL:
                self._to_check.add(event.id)
                self._check.set()

    def _recheck_all(self) -> None:
        self._to_check.update(self._waiters)
        self._check.set()

    async def close(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        if self._checker is not None:
            self._checker.cancel()
            await asyncio.gather(self._checker, return_exceptions=True)
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()
        self._waiters.clear()
        if self._redis is not None:
            await self._redis.stop()
        if self._listener is not None:
            await self._listener.stop()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    # ---------------------------------------------------------------- streams

    def stream(
        self,
        queues: Collection[str] | None = None,
        job_ids: Collection[UUID] | None = None,
        events: Collection[str] | None = None,
    ) -> EventStream:
        return EventStream(self, queues, job_ids, events)

    async def add_stream(self, stream: EventStream) -> None:
        await self._ensure_started()
        self._streams.add(stream)
        # Workers only send events while someone consumes them and look every WATCH_S:
        # a new consumer lets them notice before promising to miss nothing.
        wait = self._live_since + NOTICE_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    def remove_stream(self, stream: EventStream) -> None:
        self._streams.discard(stream)

    # ---------------------------------------------------------------- waiting

    async def wait(self, job_id: UUID, timeout: float | None) -> Any:
        """The job's result once it completed; JobFailed once it failed or was
        cancelled; TimeoutError after `timeout` seconds (None = no limit)."""
        await self._ensure_started()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        self._to_check.add(job_id)
        self._check.set()
        if self._checker is None or self._checker.done():
            self._checker = asyncio.create_task(self._check_loop(), name="pgjobs-waiters")
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            waiting = self._waiters.get(job_id)
            if waiting is not None:
                if future in waiting:
                    waiting.remove(future)
                if not waiting:
                    del self._waiters[job_id]
            if not future.done():
                future.cancel()

    async def _check_loop(self) -> None:
        delay = ReconnectDelay()
        while self._waiters:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check.wait(), self._poll_interval())
            self._check.clear()
            due = self._to_check if self._to_check else set(self._waiters)
            self._to_check = set()
            ids = [i for i in due if i in self._waiters]
            try:
                for start in range(0, len(ids), WAIT_CHUNK):
                    await self._resolve(ids[start : start + WAIT_CHUNK])
                delay.reset()
            except (psycopg.Error, OSError) as exc:
                log.warning("checking awaited jobs failed (%s); retrying", exc)
                self._to_check.update(ids)
                await asyncio.sleep(delay.next())

    def _poll_interval(self) -> float:
        # Until workers noticed this new consumer they may send no events: look often.
        if time.monotonic() < self._live_since + NOTICE_S:
            return min(self._poll, 0.2)
        return self._poll

    async def _resolve(self, ids: list[UUID]) -> None:
        async with self._app.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("wait_job_states"), {"ids": ids})
            rows = {row["id"]: row for row in await cur.fetchall()}
        for job_id in ids:
            row = rows.get(job_id)
            if row is None:
                self._settle(job_id, exception=JobNotFound(f"no job with id {job_id}"))
            elif row["status"] == "completed":
                self._settle(job_id, result=row["result"])
            elif row["status"] in TERMINAL:
                message = row["last_error"] or row["status"]
                if row["status"] == "cancelled":
                    message = "cancelled"
                self._settle(
                    job_id, exception=JobFailed(message, job_id=job_id, status=row["status"])
                )

    def _settle(
        self, job_id: UUID, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        for future in self._waiters.pop(job_id, []):
            if future.done():
                continue
            if exception is not None:
                future.set_exception(exception)
            else:
                future.set_result(result)
