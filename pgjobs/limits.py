"""Rate limits: at most `max` job starts per `duration` ms, per queue and per
rate-limit key, enforced across every worker.

Configuration. A queue's limit lives in job_queues (rate_limit_max,
rate_limit_duration_ms); key limits live in job_rate_limits as patterns: a job whose
`rateLimitKey` matches a pattern is limited per key (`tenant:*` gives every tenant its
own budget). `*` matches any run of characters and `?` one; an exact pattern beats any
glob, a glob with more literal characters beats one with fewer. A job may need two
tokens: one of its queue and one of its key. Workers read the configuration every
couple of seconds (REFRESH_S), so a change takes effect within that.

The claim. A worker whose queues have limits (or any worker once key limits exist)
claims in one transaction of three steps instead of the single claim_jobs statement:
1. lock the next pending jobs in claim order (SKIP LOCKED), leaving out the queues and
   keys that had no tokens at the last answer — their jobs wait, the others do not;
2. take one token per limited bucket of each locked job, atomically across buckets,
   jobs served in claim order (a job gets all its tokens or none);
3. claim exactly the granted jobs, commit.
Tokens are taken for rows already locked, so no token goes unused; only a claim that
fails after Redis granted gives its tokens back (best effort: at worst they are lost
for one window, which only makes the limit stricter).

Buckets are sliding logs, not token buckets: a bucket grants while fewer than `max`
starts lie inside the last `duration`, so no window of that length ever holds more
(a token bucket would let 2 x max through across a refill). Redis keeps each log in a
sorted set and updates it in one Lua script run with EVALSHA (limits.lua); Postgres
keeps it in job_rate_buckets and updates it with pgjobs_take_tokens inside the claim's
transaction, whose instant becomes the jobs' started_at. Redis counts on its own clock
while started_at comes from PostgreSQL a moment later, so Redis windows carry a guard
of 5 % (at most 50 ms): windows measured from started_at hold too.

Stores and failures (with JOBS_REDIS_URL set; without it Postgres is the only store).
job_rate_state says which store holds the tokens, so every worker uses the same one:
- Redis fails: the worker switches the state to 'postgres' and claims on. Starts that
  Redis granted cannot be read any more, so the Postgres store grants nothing in a
  bucket until one window after Redis may last have granted: limits fail closed. With
  JOBS_RATE_LIMIT_FAIL_OPEN=true that wait is skipped (a window may then hold up to
  twice its max once).
- Redis returns: a worker in 'postgres' mode probes it every PROBE_S; the first to
  reach it locks the state, copies the Postgres log into Redis and switches the state
  back; the others follow at their next claim.
- A Redis that lost its data (restart without persistence) has no state marker: the
  first worker to notice adopts it again, waiting one window if it had been in use.
Limits are exact while every worker sees the same store; a network partition that lets
some workers reach Redis and others not can exceed them until the state converges.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from pgjobs.backoff import keep_running
from pgjobs.clock import Clock
from pgjobs.config import Settings
from pgjobs.errors import NotFound, ValidationError
from pgjobs.producer.options import validate_queue
from pgjobs.queries import query
from pgjobs.signals import redis_client as cache
from pgjobs.validation import MAX_RATE_DURATION_MS, MAX_RATE_JOBS

log = logging.getLogger("pgjobs.limits")

MAX_JOBS = MAX_RATE_JOBS
MAX_DURATION_MS = MAX_RATE_DURATION_MS
MAX_PATTERN = 255
REFRESH_S = 2.0
PROBE_S = 1.0
MAX_ROUNDS = 3
# How many keys a claim may leave out; beyond that the oldest exhaustion is forgotten
# (its jobs are then locked and refused once more, which costs a round, not the limit).
MAX_EXCLUDED = 1000

AsyncConn = psycopg.AsyncConnection[Any]
Row = dict[str, Any]


# ------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class RateLimit:
    max_jobs: int
    duration_ms: int

    def to_dict(self) -> dict[str, int]:
        return {"max": self.max_jobs, "duration": self.duration_ms}

    def describe(self) -> str:
        return f"at most {self.max_jobs} jobs per {self.duration_ms} ms"


def _whole(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("+").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        shown = str(value)[:40]
        raise ValidationError(
            f"{name} must be a whole number from {low} to {high:,} (got {shown!r})", field=name
        )
    return value


def rate_limit(max_jobs: Any, duration_ms: Any) -> RateLimit:
    """A validated limit: 1..100,000 starts per 1 ms..1 day."""
    return RateLimit(
        _whole("max", max_jobs, 1, MAX_JOBS), _whole("duration", duration_ms, 1, MAX_DURATION_MS)
    )


def validate_pattern(pattern: Any) -> str:
    if (
        not isinstance(pattern, str)
        or not 1 <= len(pattern) <= MAX_PATTERN
        or "\x00" in pattern
        or pattern.strip() != pattern
    ):
        raise ValidationError(
            f"a key pattern must be 1 to {MAX_PATTERN} characters without NUL or surrounding "
            "spaces",
            field="pattern",
        )
    return pattern


@dataclass(frozen=True, slots=True)
class QueueLimit:
    queue: str
    limit: RateLimit | None

    def to_dict(self) -> dict[str, Any]:
        limit = self.limit
        return {
            "queue": self.queue,
            "max": limit.max_jobs if limit else None,
            "duration": limit.duration_ms if limit else None,
        }


@dataclass(frozen=True, slots=True)
class KeyLimit:
    pattern: str
    limit: RateLimit

    def to_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, **self.limit.to_dict()}


@dataclass(frozen=True, slots=True)
class Limits:
    queues: tuple[QueueLimit, ...]
    keys: tuple[KeyLimit, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "queues": [q.to_dict() for q in self.queues],
            "keys": [k.to_dict() for k in self.keys],
        }


# ------------------------------------------------------------------ operations
# Plain functions over a connection. The CLI, the REST API and the dashboard reach them
# through pgjobs.ops.Ops, which records each change in the audit trail in the same
# transaction; they write no audit row themselves.


async def set_queue_limit(
    conn: AsyncConn, queue: str, max_jobs: Any, duration_ms: Any
) -> QueueLimit:
    """Limit `queue` to `max_jobs` starts per `duration_ms` (the queue may be new)."""
    name = validate_queue(queue)
    limit = rate_limit(max_jobs, duration_ms)
    row = await _one(
        conn,
        "limits_set_queue",
        {"queue": name, "max_jobs": limit.max_jobs, "duration_ms": limit.duration_ms},
    )
    assert row is not None
    return _queue_limit(row)


async def clear_queue_limit(conn: AsyncConn, queue: str) -> QueueLimit:
    """Remove the limit of `queue` (NotFound for a queue that has no row)."""
    name = validate_queue(queue)
    row = await _one(conn, "limits_clear_queue", {"queue": name})
    if row is None:
        raise NotFound(f"no queue named {name!r}")
    return _queue_limit(row)


async def set_key_limit(conn: AsyncConn, pattern: str, max_jobs: Any, duration_ms: Any) -> KeyLimit:
    """Limit every rate-limit key matching `pattern` to `max_jobs` starts per
    `duration_ms`, each key on its own."""
    text = validate_pattern(pattern)
    limit = rate_limit(max_jobs, duration_ms)
    row = await _one(
        conn,
        "limits_set_key",
        {
            "pattern": text,
            "max_jobs": limit.max_jobs,
            "duration_ms": limit.duration_ms,
            "now": None,
        },
    )
    assert row is not None
    return KeyLimit(row["pattern"], RateLimit(row["max_jobs"], row["duration_ms"]))


async def clear_key_limit(conn: AsyncConn, pattern: str) -> KeyLimit:
    text = validate_pattern(pattern)
    row = await _one(conn, "limits_clear_key", {"pattern": text})
    if row is None:
        raise NotFound(f"no key limit with pattern {text!r}")
    return KeyLimit(row["pattern"], RateLimit(row["max_jobs"], row["duration_ms"]))


async def list_limits(conn: AsyncConn) -> Limits:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query("limits_list"))
        rows = await cur.fetchall()
    return Limits(
        tuple(
            QueueLimit(r["name"], RateLimit(r["max_jobs"], r["duration_ms"]))
            for r in rows
            if r["kind"] == "queue"
        ),
        tuple(
            KeyLimit(r["name"], RateLimit(r["max_jobs"], r["duration_ms"]))
            for r in rows
            if r["kind"] == "key"
        ),
    )


def _queue_limit(row: Row) -> QueueLimit:
    limit = None
    if row["max_jobs"] is not None and row["duration_ms"] is not None:
        limit = RateLimit(row["max_jobs"], row["duration_ms"])
    return QueueLimit(row["queue"], limit)


async def _one(conn: AsyncConn, name: str, params: dict[str, Any]) -> Row | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query(name), params)
        return await cur.fetchone()


# ------------------------------------------------------------------ matching


def _glob(pattern: str) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


class KeyMatcher:
    """Finds the limit of a rate-limit key: an exact pattern first, else the matching
    glob with the most literal characters (ties: the lexically smallest pattern)."""

    def __init__(self, limits: dict[str, RateLimit]) -> None:
        self._exact = {p: lim for p, lim in limits.items() if "*" not in p and "?" not in p}
        globs = [(p, lim) for p, lim in limits.items() if p not in self._exact]
        globs.sort(key=lambda item: (-len(item[0].replace("*", "").replace("?", "")), item[0]))
        self._globs = [(_glob(p), lim) for p, lim in globs]
        self._seen: dict[str, RateLimit | None] = {}

    def __bool__(self) -> bool:
        return bool(self._exact or self._globs)

    def limit_of(self, key: str) -> RateLimit | None:
        if key in self._seen:
            return self._seen[key]
        found = self._exact.get(key)
        if found is None:
            found = next((lim for rx, lim in self._globs if rx.fullmatch(key)), None)
        if len(self._seen) > 50_000:
            self._seen.clear()
        self._seen[key] = found
        return found


@dataclass
class LimitTable:
    queues: dict[str, RateLimit]
    keys: KeyMatcher
    store: str

    @classmethod
    def from_rows(cls, rows: list[Row]) -> LimitTable:
        queues = {
            r["name"]: RateLimit(r["max_jobs"], r["duration_ms"])
            for r in rows
            if r["kind"] == "queue"
        }
        keys = {
            r["name"]: RateLimit(r["max_jobs"], r["duration_ms"])
            for r in rows
            if r["kind"] == "key"
        }
        store = next((r["name"] for r in rows if r["kind"] == "store"), "redis")
        return cls(queues, KeyMatcher(keys), store)

    def applies_to(self, queues: Sequence[str]) -> bool:
        return bool(self.keys) or any(q in self.queues for q in queues)


# ------------------------------------------------------------------ token requests


@dataclass
class TokenRequest:
    """Buckets (1-based in firsts/seconds, 0 = none) and the jobs that need them."""

    buckets: list[str] = field(default_factory=list)
    limits: list[RateLimit] = field(default_factory=list)
    firsts: list[int] = field(default_factory=list)
    seconds: list[int] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)

    def bucket(self, name: str, limit: RateLimit) -> int:
        index = self._index.get(name)
        if index is None:
            self.buckets.append(name)
            self.limits.append(limit)
            index = self._index[name] = len(self.buckets)
        return index


@dataclass
class TokenAnswer:
    grants: list[bool]
    waits_ms: list[int]
    taken_at: datetime | None  # Postgres store: the instant to record as started_at


def redis_window_ms(limit: RateLimit) -> int:
    """The Redis window: the limit's duration plus the started_at guard."""
    return limit.duration_ms + min(50, limit.duration_ms // 20)


_SCRIPT = resources.files("pgjobs").joinpath("limits.lua").read_text(encoding="utf-8")
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode(), usedforsecurity=False).hexdigest()


class RedisUnadopted(Exception):
    """This Redis has no limiter state marker: it must be adopted before it grants."""


class RedisTokens:
    """The Redis store: the Lua script by EVALSHA (loaded on NOSCRIPT)."""

    def __init__(self, client: Any, keys: cache.Keys) -> None:
        self.client = client
        self.keys = keys

    async def take(self, request: TokenRequest, prefix: str) -> TokenAnswer:
        # Loaded already by the client; not at module level (see signals/redis_client.py).
        import redis

        args: list[Any] = [prefix]
        for limit in request.limits:
            args += [limit.max_jobs, redis_window_ms(limit)]
        for first, second in zip(request.firsts, request.seconds, strict=True):
            args += [first, second]
        keys = [self.keys.bucket(b) for b in request.buckets] + [self.keys.limits_marker]
        try:
            reply = await self.client.evalsha(_SCRIPT_SHA, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await self.client.script_load(_SCRIPT)
            reply = await self.client.evalsha(_SCRIPT_SHA, len(keys), *keys, *args)
        if reply[0] == -1:
            raise RedisUnadopted
        grants, waits, _now = reply
        return TokenAnswer([bool(g) for g in grants], [int(w) for w in waits], None)

    async def release(self, request: TokenRequest, answer: TokenAnswer, prefix: str) -> None:
        """Give back the tokens of a claim that failed after they were granted."""
        async with self.client.pipeline(transaction=False) as pipe:
            for j, granted in enumerate(answer.grants, start=1):
                for index in (request.firsts[j - 1], request.seconds[j - 1]):
                    if granted and index:
                        pipe.zrem(self.keys.bucket(request.buckets[index - 1]), f"{prefix}:{j}")
            await pipe.execute()

    async def time_ms(self) -> int:
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def adopt(self, conn: AsyncConn, strict: bool) -> None:
        """Make Redis the store (see the module docstring), inside `conn`'s transaction."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("limits_lock_state"), {"now": None})
            state = await cur.fetchone()
            assert state is not None
            marker = await self.client.get(self.keys.limits_marker)
            redis_now = await self.time_ms()
            pg_now: datetime = state["now"]
            offset = redis_now - _ms(pg_now)
            if state["store"] == "postgres":
                await cur.execute(query("limits_postgres_log"), {"now": pg_now})
                logs = await cur.fetchall()
                since = 0
                if strict and state["redis_grants_until"] is not None:
                    since = _ms(state["redis_grants_until"]) + offset
                await self._seed(logs, offset, since)
                log.info("rate limits: Redis holds the tokens again (%d buckets copied)", len(logs))
            elif marker is None:
                # Redis lost its data (or is new): if it was in use, starts it granted in
                # the last window are unknown, so every bucket waits one window.
                used = state["redis_adopted_at"] is not None
                since = redis_now if strict and used else 0
                await self.client.set(self.keys.limits_marker, since, nx=True)
                if used:
                    log.warning("rate limits: Redis lost its state; limited queues wait one window")
            await cur.execute(query("limits_adopt_redis"), {"now": pg_now})

    async def _seed(self, logs: list[Row], offset: int, since: int) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for row in logs:
                if row["starts"]:
                    entries = {
                        f"pg:{_ms(start)}:{n}": _ms(start) + offset
                        for n, start in enumerate(row["starts"])
                    }
                    key = self.keys.bucket(row["bucket"])
                    pipe.zadd(key, entries)
                    pipe.pexpire(key, row["window_ms"] + 1000)
            pipe.set(self.keys.limits_marker, since)
            await pipe.execute()


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


# ------------------------------------------------------------------ the worker's limiter


class RateLimiter:
    """The worker's side of rate limiting; the fetch loop asks it to claim only while
    `active` (limits apply to the worker's queues, or the configuration is not read yet)."""

    def __init__(self, settings: Settings, worker_id: UUID, queues: Sequence[str]) -> None:
        self._settings = settings
        self._worker = worker_id
        self._queues = list(queues)
        self._strict = not settings.rate_limit_fail_open
        self._redis_url = settings.redis_url
        self._redis: RedisTokens | None = None
        self.store = "postgres"
        self.table: LimitTable | None = None
        self._exhausted: dict[str, float] = {}  # bucket -> monotonic time it grants again
        self._last_redis_grant: float | None = None
        self._calls = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._pool: AsyncConnectionPool | None = None

    @property
    def active(self) -> bool:
        return self.table is None or self.table.applies_to(self._queues)

    # ---------------------------------------------------------------- lifecycle

    async def start(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        with contextlib.suppress(psycopg.Error, OSError):  # retried by claim() and the loop
            await self.refresh(pool)
        self._task = asyncio.create_task(
            keep_running("rate-limit refresh", lambda: self._loop(pool), log),
            name="pgjobs-limits",
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._redis is not None:
            with contextlib.suppress(*cache.ERRORS):
                await self._redis.client.aclose()

    async def refresh(self, pool: AsyncConnectionPool) -> None:
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            if self._redis_url is not None and self._redis is None:
                self._redis = RedisTokens(
                    cache.async_client(self._redis_url), cache.Keys(conn.info.dbname)
                )
            await cur.execute(query("limits_config"))
            table = LimitTable.from_rows(await cur.fetchall())
        first = self.table is None
        self.table = table
        if self._redis is None:
            self.store = "postgres"
        elif first or table.store == "postgres":
            # Follow the shared state: never grant from Redis while others use Postgres.
            self.store = table.store

    async def _loop(self, pool: AsyncConnectionPool) -> None:
        next_refresh = time.monotonic() + REFRESH_S
        while True:
            await asyncio.sleep(PROBE_S)
            try:
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + REFRESH_S
                    await self.refresh(pool)
                if self.store == "postgres" and self._redis is not None and self.active:
                    await self._try_adopt(pool)
            except (psycopg.Error, OSError) as exc:
                log.warning("rate limits: refreshing failed (%s); will retry", exc)

    async def _try_adopt(self, pool: AsyncConnectionPool) -> None:
        assert self._redis is not None
        try:
            await self._redis.client.ping()
            async with pool.connection() as conn, conn.transaction():
                await self._redis.adopt(conn, self._strict)
        except cache.ERRORS:
            return  # still down; probe again later
        self.store = "redis"
        self._exhausted.clear()

    # ---------------------------------------------------------------- claiming

    def ready_in(self) -> float | None:
        """Seconds until the earliest exhausted bucket grants again (None: none is)."""
        self._forget_expired()
        if not self._exhausted:
            return None
        return max(0.0, min(self._exhausted.values()) - time.monotonic())

    def exhausted(self) -> list[str]:
        """The buckets ("q:<queue>", "k:<rate limit key>") this worker leaves out of its
        claims until they grant again, oldest first; at most 4 * MAX_EXCLUDED."""
        self._forget_expired()
        return list(self._exhausted)

    def _forget_expired(self) -> None:
        now = time.monotonic()
        if any(until <= now for until in self._exhausted.values()):
            self._exhausted = {b: t for b, t in self._exhausted.items() if t > now}

    async def claim(
        self, pool: AsyncConnectionPool, limit: int, clock: Clock
    ) -> list[dict[str, Any]]:
        """Claim up to `limit` jobs, no more than the stores grant; rows as claim_jobs."""
        self._pool = pool
        if self.table is None:
            await self.refresh(pool)
        claimed: list[dict[str, Any]] = []
        for _ in range(MAX_ROUNDS):
            self._forget_expired()
            queues = [q for q in self._queues if f"q:{q}" not in self._exhausted]
            if not queues:
                break
            excluded = [b[2:] for b in self._exhausted if b.startswith("k:")][-MAX_EXCLUDED:]
            rows, refused = await self._claim_round(
                pool, queues, excluded, limit - len(claimed), clock
            )
            claimed += rows
            # Refusals taught us which keys and queues to leave out: look again at once
            # for jobs that need no tokens, instead of waiting for the poll.
            if not refused or len(claimed) >= limit:
                break
        return claimed

    async def _claim_round(
        self,
        pool: AsyncConnectionPool,
        queues: list[str],
        excluded: list[str],
        limit: int,
        clock: Clock,
    ) -> tuple[list[dict[str, Any]], bool]:
        assert self.table is not None
        async with pool.connection() as conn, conn.transaction():
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    query("limits_lock_candidates"),
                    {"queues": queues, "excluded_keys": excluded, "limit": limit},
                )
                candidates = await cur.fetchall()
            if not candidates:
                return [], False
            request = TokenRequest()
            needs: list[int] = []  # candidate positions that need tokens
            for position, row in enumerate(candidates):
                first = second = 0
                queue_limit = self.table.queues.get(row["queue"])
                if queue_limit is not None:
                    first = request.bucket(f"q:{row['queue']}", queue_limit)
                key = row["rate_limit_key"]
                key_limit = self.table.keys.limit_of(key) if key is not None else None
                if key_limit is not None:
                    second = request.bucket(f"k:{key}", key_limit)
                if first or second:
                    request.firsts.append(first)
                    request.seconds.append(second)
                    needs.append(position)
            granted = [True] * len(candidates)
            started_at = clock.sql_now()
            answer: TokenAnswer | None = None
            prefix = f"{self._worker.hex}:{next(self._calls)}"
            if needs:
                answer = await self._take(conn, request, prefix, clock)
                for position, ok in zip(needs, answer.grants, strict=True):
                    granted[position] = ok
                if answer.taken_at is not None:
                    started_at = answer.taken_at
                self.note_waits(request, answer)
            granted_rows = [row for row, ok in zip(candidates, granted, strict=True) if ok]
            ids = [row["id"] for row in granted_rows]
            refused = len(ids) < len(candidates)
            if not ids:
                return [], refused
            try:
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(
                        query("limits_claim_locked"),
                        {
                            "ids": ids,
                            "ready": [row["ready_ctid"] for row in granted_rows],
                            "now": started_at,
                            "worker": self._worker,
                        },
                    )
                    rows = await cur.fetchall()
            except BaseException:
                if answer is not None and answer.taken_at is None and self._redis is not None:
                    with contextlib.suppress(*cache.ERRORS):
                        await self._redis.release(request, answer, prefix)
                raise
        return rows, refused

    def note_waits(self, request: TokenRequest, answer: TokenAnswer) -> None:
        """Remember the buckets a token answer said are exhausted, and for how long.
        `claim()` calls it after each take; it is public as a test seam, so the bound on
        what is remembered can be tested without a token store."""
        now = time.monotonic()
        for bucket, wait in zip(request.buckets, answer.waits_ms, strict=True):
            if wait > 0:
                self._exhausted.pop(bucket, None)  # re-insert: newest last
                self._exhausted[bucket] = now + wait / 1000
        while len(self._exhausted) > 4 * MAX_EXCLUDED:  # bounded memory: oldest go first
            del self._exhausted[next(iter(self._exhausted))]

    async def _take(
        self, conn: AsyncConn, request: TokenRequest, prefix: str, clock: Clock
    ) -> TokenAnswer:
        for _ in range(3):
            if self.store == "redis" and self._redis is not None:
                try:
                    answer = await self._redis.take(request, prefix)
                    self._last_redis_grant = time.monotonic()
                    return answer
                except RedisUnadopted:
                    await self._adopt_now()
                    continue
                except cache.ERRORS as exc:
                    await self._leave_redis(conn, exc)
                    continue
            answer_or_none = await self._take_postgres(conn, request, clock)
            if answer_or_none is not None:
                return answer_or_none
            self.store = "redis"  # another worker adopted Redis meanwhile
        # The stores kept handing the claim to each other: grant nothing this round.
        wait = round(PROBE_S * 1000)
        return TokenAnswer([False] * len(request.firsts), [wait] * len(request.buckets), None)

    async def _take_postgres(
        self, conn: AsyncConn, request: TokenRequest, clock: Clock
    ) -> TokenAnswer | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                query("limits_take_tokens"),
                {
                    "buckets": request.buckets,
                    "maxes": [lim.max_jobs for lim in request.limits],
                    "windows": [lim.duration_ms for lim in request.limits],
                    "firsts": request.firsts,
                    "seconds": request.seconds,
                    "now": clock.sql_now(),
                    "follow_store": self._redis is not None,
                    "strict": self._strict,
                },
            )
            row = await cur.fetchone()
        assert row is not None
        if row["use_redis"]:
            return None
        return TokenAnswer(list(row["grants"]), list(row["waits_ms"]), row["taken_at"])

    async def _leave_redis(self, conn: AsyncConn, exc: BaseException) -> None:
        log.warning(
            "rate limits: Redis failed (%s); PostgreSQL holds the tokens until it is back",
            cache.describe(exc),
        )
        age = None
        if self._last_redis_grant is not None:
            age = round((time.monotonic() - self._last_redis_grant) * 1000)
        # In the claim's transaction: committed with it, a moment later.
        await conn.execute(query("limits_leave_redis"), {"now": None, "last_grant_age_ms": age})
        self.store = "postgres"
        self._exhausted.clear()

    async def _adopt_now(self) -> None:
        assert self._redis is not None and self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            await self._redis.adopt(conn, self._strict)
        self.store = "redis"
