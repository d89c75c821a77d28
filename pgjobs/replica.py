"""Reads from a streaming replica (JOBS_READ_DATABASE_URL), with the primary as fallback.

The operator read models (dashboard pages, the stats, job, queue and worker lists,
/metrics) run through `ReadRouter.run`. Each read first measures how far the replica
is behind the primary: the primary's WAL position is read, then the replica's replay
position is compared with it. A replica that has replayed up to that position is up to
date, however long ago the last transaction committed (an idle primary commits
nothing, so the replay timestamp alone would call an idle replica stale). One that is
not is as far behind as the smaller of two bounds: the age of the last transaction it
replayed, and the time since this process last saw it caught up.

A replica behind by more than JOBS_READ_MAX_LAG, or one that cannot be reached, is
skipped: the read runs on the primary and says why. A circuit breaker keeps it skipped
for a short back-off, so a replica that is down costs one quick connection attempt per
back-off, not a connect timeout per request. Which server answered is collected per
request (`observe_reads`), for the pages, headers and CLI lines that show it.

Reads that must see the caller's own writes never come here (they use the App's
primary pool), and `primary_reads()` sends the router's reads to the primary too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg.rows import dict_row

from pgjobs.config import Settings
from pgjobs.db import connect_kwargs
from pgjobs.queries import query

T = TypeVar("T")
AsyncConn = psycopg.AsyncConnection[Any]
Connect = Callable[[], AbstractAsyncContextManager[AsyncConn]]

log = logging.getLogger("pgjobs.replica")

# libpq's shortest useful connect timeout: a replica that does not answer costs the one
# read that probes it this long, then the breaker sends reads to the primary.
CONNECT_TIMEOUT_S = 2
# The lag probe is a one-row query; a replica that takes longer is treated as down.
PROBE_TIMEOUT_S = 2.0
# Back-off before an unreachable replica is tried again: doubled per failed try.
RETRY_MIN_S = 1.0
RETRY_MAX_S = 8.0
# A replica found lagging is measured again after this long (the probe is cheap).
LAG_RETRY_S = 1.0
# Replica connections kept open and used at a time.
POOL_SIZE = 8
# How long a read waits for one of them before it goes to the primary instead.
CHECKOUT_TIMEOUT_S = 5.0

UNAVAILABLE = "unavailable"
LAGGING = "lagging"
CANCELLED = "cancelled"
# When one request made several reads, the note of the worst one is shown.
_SEVERITY = {UNAVAILABLE: 3, LAGGING: 2, CANCELLED: 1}


@dataclass(frozen=True, slots=True)
class ReadSource:
    """Where one read meant for the replica ran.

    `fallback` None: on the replica, `lag_s` behind (0 = up to date). Otherwise on the
    primary, because the replica was `unavailable`, `lagging` (`lag_s` behind;
    infinite when it never caught up within sight) or `cancelled` the read (a
    recovery conflict)."""

    fallback: str | None
    lag_s: float | None = None

    @property
    def replica(self) -> bool:
        return self.fallback is None

    @property
    def note(self) -> str:
        if self.fallback is None:
            lag = self.lag_s or 0.0
            return "read from a replica: " + ("up to date" if lag <= 0 else f"{_secs(lag)} behind")
        if self.fallback == LAGGING:
            if self.lag_s is None or math.isinf(self.lag_s):
                return "replica behind: reading from the primary"
            return f"replica {_secs(self.lag_s)} behind: reading from the primary"
        if self.fallback == CANCELLED:
            return "replica cancelled the read: reading from the primary"
        return "replica unavailable: reading from the primary"

    def headers(self) -> dict[str, str]:
        """HTTP response headers that say where the response was read."""
        out = {"X-Read-From": "replica" if self.replica else "primary", "X-Read-Note": self.note}
        if self.lag_s is not None and math.isfinite(self.lag_s):
            out["X-Replica-Lag"] = f"{self.lag_s:.3f}"
        return out


def _secs(seconds: float) -> str:
    if seconds < 0.1:
        return "under 0.1 s"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


@dataclass
class ReadLog:
    """The sources of the reads made while it is observed."""

    sources: list[ReadSource] = field(default_factory=list)

    @property
    def summary(self) -> ReadSource | None:
        """The one to show: the worst fallback, else the replica read furthest behind."""
        if not self.sources:
            return None
        return max(self.sources, key=lambda s: (_SEVERITY.get(s.fallback or "", 0), s.lag_s or 0.0))

    @property
    def note(self) -> str | None:
        summary = self.summary
        return None if summary is None else summary.note


_log: ContextVar[ReadLog | None] = ContextVar("pgjobs_read_log", default=None)
_primary_only: ContextVar[bool] = ContextVar("pgjobs_primary_reads", default=False)


@contextmanager
def observe_reads() -> Iterator[ReadLog]:
    """Collect where the reads made inside the block ran (tasks started inside it
    report to it too)."""
    reads = ReadLog()
    token = _log.set(reads)
    try:
        yield reads
    finally:
        _log.reset(token)


def current_reads() -> ReadLog | None:
    """The log of the innermost `observe_reads` block around the caller, if any."""
    return _log.get()


@contextmanager
def primary_reads() -> Iterator[None]:
    """Run the reads inside the block on the primary: for a page that shows the
    outcome of a change just made."""
    token = _primary_only.set(True)
    try:
        yield
    finally:
        _primary_only.reset(token)


def _record(source: ReadSource) -> None:
    reads = _log.get()
    if reads is not None:
        reads.sources.append(source)


class Reader(Protocol):
    """Runs a read-only `read(conn)` on some server and returns its result."""

    async def __call__(self, read: Callable[[AsyncConn], Awaitable[T]]) -> T: ...


def reader_of(connect: Connect) -> Reader:
    """A Reader that runs every read on a connection of `connect`."""

    async def run(read: Callable[[AsyncConn], Awaitable[T]]) -> T:
        async with connect() as conn:
            return await read(conn)

    return run


def replica_lag(
    bytes_behind: float, replay_age_s: float | None, since_caught_up_s: float | None
) -> float:
    """Seconds the replica is behind, at most (0 = it holds everything the primary
    had when the read began; infinite = behind by an unknown time)."""
    if bytes_behind <= 0:
        return 0.0
    bounds = [b for b in (replay_age_s, since_caught_up_s) if b is not None]
    return max(0.0, min(bounds)) if bounds else math.inf


class _Skip(Exception):
    """The replica cannot serve this read; run it on the primary and say why."""

    def __init__(self, source: ReadSource) -> None:
        super().__init__(source.note)
        self.source = source


class ReadRouter:
    """Runs reads on the replica when one is configured and keeps up, else on the
    primary connection the caller passes. Its connections open on first use, in the
    running event loop."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.read_database_url
        self.max_lag_s = settings.read_max_lag_ms / 1000
        self._pooled = settings.transaction_pooling  # the replica behind the same pooler
        self._idle: list[AsyncConn] = []
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The breaker: while time.monotonic() < _retry_at, reads skip the replica and
        # report `_skipped`. `_failures` counts failed tries in a row (the back-off).
        self._retry_at = 0.0
        self._skipped: ReadSource | None = None
        self._failures = 0
        self._caught_up_at: float | None = None

    @property
    def enabled(self) -> bool:
        return self.url is not None

    async def run(self, read: Callable[[AsyncConn], Awaitable[T]], primary: Connect) -> T:
        """`read(conn)` on the replica, or on a connection of `primary` when there is
        none, it is skipped, or the caller is inside `primary_reads()`. `read` must
        only read: it may be run a second time, on the primary."""
        if self.url is None or _primary_only.get():
            async with primary() as conn:
                return await read(conn)
        skipped = self._skipped
        now = time.monotonic()
        if skipped is not None and now >= self._retry_at:
            # Half open: this read tries the replica, the others keep to the primary
            # until it has succeeded or failed.
            self._retry_at = now + CONNECT_TIMEOUT_S + PROBE_TIMEOUT_S
            skipped = None
        if skipped is None:
            try:
                return await self._on_replica(self.url, read, primary)
            except _Skip as exc:
                skipped = exc.source
        _record(skipped)
        async with primary() as conn:
            return await read(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        if self._loop is not asyncio.get_running_loop():
            return  # connections of a loop that is gone cannot be closed from this one
        for conn in idle:
            await _close_quietly(conn)

    # ------------------------------------------------------------ internals

    async def _on_replica(
        self, url: str, read: Callable[[AsyncConn], Awaitable[T]], primary: Connect
    ) -> T:
        started = time.monotonic()
        # Errors of the primary are the caller's, as for any read of the primary.
        async with primary() as conn:
            row = await _one(conn, "replica_primary_lsn", {})
        primary_lsn = row["lsn"]
        async with self._connection(url) as (conn, reused):
            lag = await self._measure(url, conn, reused, primary_lsn, started)
            if lag > self.max_lag_s:
                self._trip(ReadSource(LAGGING, lag), LAG_RETRY_S)
                raise _Skip(ReadSource(LAGGING, lag))
            try:
                result = await read(conn)
            except psycopg.errors.QueryCanceled:
                raise  # a statement timeout: the same read would time out on the primary
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if conn.broken or conn.closed:
                    self._unavailable(url, exc)
                    raise _Skip(ReadSource(UNAVAILABLE)) from exc
                # Replay removed rows the read still needed (a recovery conflict).
                raise _Skip(ReadSource(CANCELLED)) from exc
            except psycopg.ProgrammingError as exc:
                # A replica that is not what DATABASE_URL's database is (no such table,
                # no right to read it): not a reason to fail the page.
                self._unavailable(url, exc)
                raise _Skip(ReadSource(UNAVAILABLE)) from exc
        if self._failures:
            log.warning("read replica available again")
        self._failures = 0
        self._skipped = None
        self._retry_at = 0.0
        _record(ReadSource(None, lag))
        return result

    async def _measure(
        self, url: str, conn: AsyncConn, reused: bool, primary_lsn: str, started: float
    ) -> float:
        try:
            position = await asyncio.wait_for(
                _one(conn, "replica_position", {"primary_lsn": primary_lsn}), PROBE_TIMEOUT_S
            )
        except (psycopg.Error, TimeoutError) as exc:
            # Any error here, a refused login or a permission included, means this
            # replica cannot serve reads now: the primary does.
            self._unavailable(url, exc)
            if reused:
                # A kept connection may have died with a restart of the replica, which
                # is back: the breaker lets the next read try a fresh one.
                await self._drop_idle()
            raise _Skip(ReadSource(UNAVAILABLE)) from exc
        since = None if self._caught_up_at is None else started - self._caught_up_at
        lag = replica_lag(float(position["bytes_behind"]), position["replay_age_s"], since)
        if lag == 0.0:
            self._caught_up_at = started
        return lag

    @contextlib.asynccontextmanager
    async def _connection(self, url: str) -> AsyncIterator[tuple[AsyncConn, bool]]:
        """A replica connection and whether it was used before; kept for the next read
        when it comes back idle."""
        slots = self._bind_loop()
        try:
            await asyncio.wait_for(slots.acquire(), CHECKOUT_TIMEOUT_S)
        except TimeoutError:
            raise _Skip(ReadSource(UNAVAILABLE)) from None
        conn: AsyncConn | None = None
        try:
            reused = bool(self._idle)
            conn = self._idle.pop() if self._idle else await self._connect(url)
            yield conn, reused
        finally:
            if conn is not None:
                idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                if idle and not (conn.broken or conn.closed):
                    self._idle.append(conn)
                else:
                    await _close_quietly(conn)
            slots.release()

    async def _connect(self, url: str) -> AsyncConn:
        try:
            return await psycopg.AsyncConnection.connect(
                url,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=CONNECT_TIMEOUT_S,
                **connect_kwargs("read", pooled=self._pooled),
            )
        except (psycopg.OperationalError, OSError) as exc:
            self._unavailable(url, exc)
            raise _Skip(ReadSource(UNAVAILABLE)) from exc

    def _bind_loop(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            # Connections and the semaphore belong to the loop that made them.
            self._idle, self._slots, self._loop = [], asyncio.Semaphore(POOL_SIZE), loop
        return self._slots

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close_quietly(conn)

    def _unavailable(self, url: str, exc: BaseException) -> None:
        self._failures += 1
        pause = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (self._failures - 1))
        if self._failures == 1:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            log.warning("read replica unavailable (%s); reading from the primary", reason[:200])
        self._trip(ReadSource(UNAVAILABLE), pause)

    def _trip(self, source: ReadSource, pause: float) -> None:
        self._skipped = source
        self._retry_at = time.monotonic() + pause


async def _close_quietly(conn: AsyncConn) -> None:
    with contextlib.suppress(Exception):
        await conn.close()


async def _one(conn: AsyncConn, name: str, params: dict[str, Any]) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query(name), params)
        row = await cur.fetchone()
    assert row is not None
    return row
