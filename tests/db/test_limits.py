"""Rate limits in process: configuration and its operations, pattern matching, the two
token stores and their hand-over, and workers that respect queue and key limits (with
Redis and with the Postgres store)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
import redis

import pgjobs
from pgjobs import limits
from pgjobs.app import App
from pgjobs.config import Settings
from pgjobs.errors import NotFound, ValidationError
from pgjobs.ids import uuid7
from pgjobs.limits import KeyMatcher, RateLimit, RateLimiter, RedisTokens, TokenRequest
from pgjobs.ops import Ops
from pgjobs.queries import query
from pgjobs.signals import redis_client as cache
from tests.conftest import make_settings
from tests.helpers import wait_until, wait_until_async
from tests.redis_server import shared_redis_url

pytestmark = pytest.mark.anyio


def rows(db: Any, sql: str, *params: Any) -> list[dict[str, Any]]:
    return list(db.execute(sql, params).fetchall())


def max_in_window(starts: list[datetime], window_s: float) -> int:
    """The most starts inside any half-open window [t, t + window_s)."""
    times = sorted(s.timestamp() for s in starts)
    best = 0
    for i, first in enumerate(times):
        n = sum(1 for t in times[i:] if t < first + window_s)
        best = max(best, n)
    return best


def starts_of(db: Any, where: str = "true", *params: Any) -> list[datetime]:
    return [
        r["started_at"] for r in rows(db, f"SELECT started_at FROM jobs WHERE {where}", *params)
    ]


@pytest.fixture(params=["redis", "postgres"])
def store_settings(request: pytest.FixtureRequest, db_url: str) -> Settings:
    if request.param == "redis":
        return make_settings(db_url, JOBS_REDIS_URL=shared_redis_url(), LOG_LEVEL="info")
    return make_settings(db_url, LOG_LEVEL="info")


@pytest.fixture
async def limited_app(store_settings: Settings) -> AsyncIterator[App]:
    app = App(store_settings, builtin_types=False)

    @app.handler("noop")
    async def noop(ctx: pgjobs.JobContext, payload: Any) -> str:
        return "ok"

    try:
        yield app
    finally:
        await app.close()


async def run_until_done(app: App, db: Any, count: int, concurrency: int, timeout: float) -> None:
    async with app.worker(["default"], concurrency=concurrency):

        async def done() -> bool:
            return (
                rows(db, "SELECT count(*) AS n FROM jobs WHERE status = 'completed'")[0]["n"]
                == count
            )

        await wait_until_async(done, timeout=timeout, interval=0.05, message=f"{count} jobs done")


# ------------------------------------------------------------------ configuration


def test_limit_values_are_validated() -> None:
    assert limits.rate_limit("10", 1000) == RateLimit(10, 1000)
    for bad_max, bad_duration, message in [
        (0, 1000, "max must be a whole number from 1 to 100,000 (got '0')"),
        (1.5, 1000, "max must be a whole number from 1 to 100,000 (got '1.5')"),
        (True, 1000, "max must be a whole number from 1 to 100,000 (got 'True')"),
        (5, "soon", "duration must be a whole number from 1 to 86,400,000 (got 'soon')"),
        (5, 86_400_001, "duration must be a whole number from 1 to 86,400,000 (got '86400001')"),
    ]:
        with pytest.raises(ValidationError) as caught:
            limits.rate_limit(bad_max, bad_duration)
        assert str(caught.value) == message
    for bad in ["", " x", "a\x00b", "x" * 256, 7]:
        with pytest.raises(ValidationError):
            limits.validate_pattern(bad)


def test_key_patterns_exact_first_then_most_literal_glob() -> None:
    matcher = KeyMatcher(
        {
            "tenant:*": RateLimit(1, 1000),
            "tenant:big*": RateLimit(2, 1000),
            "tenant:bigcorp": RateLimit(3, 1000),
            "api.?.com": RateLimit(4, 1000),
            "*": RateLimit(5, 1000),
        }
    )
    assert matcher.limit_of("tenant:bigcorp") == RateLimit(3, 1000)
    assert matcher.limit_of("tenant:bigger") == RateLimit(2, 1000)
    assert matcher.limit_of("tenant:small") == RateLimit(1, 1000)
    assert matcher.limit_of("api.x.com") == RateLimit(4, 1000)
    assert matcher.limit_of("api.xy.com") == RateLimit(5, 1000)
    assert matcher.limit_of("[x]") == RateLimit(5, 1000)  # no other glob syntax
    assert KeyMatcher({"a[1]": RateLimit(1, 1)}).limit_of("a1") is None
    assert not KeyMatcher({})


async def test_limit_operations_store_audit_and_refuse_bad_input(app: App, db: Any) -> None:
    """Through the operator service: one audit row per change, none for a refusal."""
    ops = Ops(app)
    created = await ops.set_queue_limit("reports", 10, 1000, actor="cli:ann")
    assert created.to_dict() == {"queue": "reports", "max": 10, "duration": 1000}
    await ops.set_queue_limit("default", "3", "500", actor="api")
    key = await ops.set_key_limit("tenant:*", 5, 1000, actor="api")
    assert key.to_dict() == {"pattern": "tenant:*", "max": 5, "duration": 1000}
    listed = await ops.limits()
    assert listed.to_dict() == {
        "queues": [
            {"queue": "default", "max": 3, "duration": 500},
            {"queue": "reports", "max": 10, "duration": 1000},
        ],
        "keys": [{"pattern": "tenant:*", "max": 5, "duration": 1000}],
    }
    cleared = await ops.clear_queue_limit("reports", actor="api")
    assert cleared.to_dict() == {"queue": "reports", "max": None, "duration": None}
    await ops.clear_key_limit("tenant:*", actor="dashboard:ann")
    before = rows(db, "SELECT * FROM job_queues ORDER BY name")
    audited = rows(db, "SELECT * FROM job_audit ORDER BY id")
    with pytest.raises(NotFound):
        await ops.clear_queue_limit("never-seen", actor="api")
    with pytest.raises(NotFound):
        await ops.clear_key_limit("tenant:*", actor="api")
    with pytest.raises(ValidationError):
        await ops.set_queue_limit("Bad Name", 1, 1, actor="api")
    with pytest.raises(ValidationError):
        await ops.set_queue_limit("default", 0, 1, actor="api")
    with pytest.raises(ValidationError):
        await ops.set_key_limit(" padded", 1, 1, actor="api")
    assert rows(db, "SELECT * FROM job_queues ORDER BY name") == before
    assert rows(db, "SELECT * FROM job_audit ORDER BY id") == audited
    audit = rows(db, "SELECT actor, action, target, detail FROM job_audit ORDER BY id")
    assert audit[0] == {
        "actor": "cli:ann",
        "action": "rate_limit",
        "target": "reports",
        "detail": {"max": 10, "duration": 1000},
    }
    assert [(a["action"], a["target"], a["actor"]) for a in audit] == [
        ("rate_limit", "reports", "cli:ann"),
        ("rate_limit", "default", "api"),
        ("key_rate_limit", "tenant:*", "api"),
        ("rate_limit_clear", "reports", "api"),
        ("key_rate_limit_clear", "tenant:*", "dashboard:ann"),
    ]


async def test_the_limits_module_writes_no_audit_row(app: App, db: Any) -> None:
    """Only the operator service records changes: direct calls (Python code that owns
    its connection) change the limits and leave the audit trail alone."""
    async with app.connection() as conn:
        await limits.set_queue_limit(conn, "reports", 10, 1000)
        await limits.set_key_limit(conn, "tenant:*", 5, 1000)
        await limits.clear_queue_limit(conn, "reports")
        await limits.clear_key_limit(conn, "tenant:*")
    assert rows(db, "SELECT * FROM job_audit") == []


# ------------------------------------------------------------------ workers


async def test_queue_limit_holds_in_every_window(limited_app: App, db: Any) -> None:
    async with limited_app.connection() as conn:
        await limits.set_queue_limit(conn, "default", 5, 1000)
    await limited_app.create_many(limited_app.build("noop", {"n": n}) for n in range(15))
    await run_until_done(limited_app, db, 15, concurrency=20, timeout=15)
    starts = starts_of(db)
    assert max_in_window(starts, 1.0) <= 5
    # 15 starts at 5 per second: the last window opens 2 s after the first.
    assert (max(starts) - min(starts)).total_seconds() >= 2.0


async def test_limited_key_waits_without_holding_up_other_keys(limited_app: App, db: Any) -> None:
    async with limited_app.connection() as conn:
        await limits.set_key_limit(conn, "tenant:*", 3, 1000)
    jobs = []
    for n in range(30):
        key = ("tenant:a", "tenant:b", "free", None)[n % 4] if n < 24 else "free"
        jobs.append(limited_app.build("noop", {"n": n}, rate_limit_key=key))
    await limited_app.create_many(jobs)
    await run_until_done(limited_app, db, 30, concurrency=5, timeout=15)
    first = min(starts_of(db))
    for tenant in ("tenant:a", "tenant:b"):
        starts = starts_of(db, "rate_limit_key = %s", tenant)
        assert len(starts) == 6 and max_in_window(starts, 1.0) <= 3
        assert (max(starts) - min(starts)).total_seconds() >= 1.0
    others = starts_of(
        db,
        "rate_limit_key IS DISTINCT FROM 'tenant:a' AND rate_limit_key IS DISTINCT FROM 'tenant:b'",
    )
    # The 18 unlimited jobs do not wait for the limited keys' next window.
    assert len(others) == 18 and (max(others) - first).total_seconds() < 0.9


async def test_a_limited_claim_marks_jobs_as_the_plain_claim_does(
    limited_app: App, db: Any
) -> None:
    plain = await limited_app.create("noop", {}, queue="plain")
    limited = await limited_app.create("noop", {}, queue="limited")
    worker = uuid7()
    async with limited_app.connection() as conn:
        await limits.set_queue_limit(conn, "limited", 5, 1000)
        async with conn.cursor() as cur:
            await cur.execute(
                query("claim_jobs"),
                {"now": None, "queues": ["plain"], "limit": 1, "worker": worker},
            )
    limiter = RateLimiter(limited_app.settings, worker, ["limited"])
    pool = await limited_app.pool()
    claimed = await limiter.claim(pool, 5, limited_app.clock)
    await limiter.stop()
    assert [row["id"] for row in claimed] == [limited.id]
    columns = rows(
        db, "SELECT * FROM jobs WHERE id = ANY(%s) ORDER BY queue", [plain.id, limited.id]
    )
    ignore = {"id", "queue", "created_at", "run_at", "started_at"}
    a, b = ({k: v for k, v in row.items() if k not in ignore} for row in columns)
    assert a == b and a["status"] == "active" and a["attempts"] == 1


# ------------------------------------------------------------------ the stores


def take_pg(
    db: Any,
    buckets: list[str],
    maxes: list[int],
    jobs: list[tuple[int, int]],
    *,
    follow: bool = False,
    strict: bool = True,
) -> dict[str, Any]:
    [row] = rows(
        db,
        "SELECT * FROM pgjobs_take_tokens(%s, %s, %s, %s, %s, NULL, %s, %s)",
        buckets,
        maxes,
        [1000] * len(buckets),
        [a for a, _ in jobs],
        [b for _, b in jobs],
        follow,
        strict,
    )
    return row


def test_postgres_store_grants_jobs_all_their_tokens_or_none(db: Any) -> None:
    # Bucket 1 (queue) allows 3, bucket 2 (key) allows 1; jobs 1 and 3 need both.
    first = take_pg(db, ["q:a", "k:x"], [3, 1], [(1, 2), (1, 0), (1, 2), (1, 0), (1, 0)])
    assert first["grants"] == [True, True, False, True, False]
    assert 900 <= first["waits_ms"][0] <= 1000 and 900 <= first["waits_ms"][1] <= 1000
    again = take_pg(db, ["q:a"], [3], [(1, 0)])
    assert again["grants"] == [False]
    assert rows(db, "SELECT bucket, cardinality(starts) AS n FROM job_rate_buckets ORDER BY 1") == [
        {"bucket": "k:x", "n": 1},
        {"bucket": "q:a", "n": 3},
    ]


def test_postgres_store_waits_one_window_after_leaving_redis(db: Any) -> None:
    assert take_pg(db, ["q:a"], [3], [(1, 0)], follow=True)["use_redis"] is True
    db.execute(
        "UPDATE job_rate_state SET store = 'postgres', redis_adopted_at = now(), "
        "redis_grants_until = pgjobs_now()"
    )
    closed = take_pg(db, ["q:a"], [3], [(1, 0)], follow=True)
    assert closed["grants"] == [False] and 900 <= closed["waits_ms"][0] <= 1000
    # Fail open (JOBS_RATE_LIMIT_FAIL_OPEN=true) does not wait for the unknown window.
    assert take_pg(db, ["q:a"], [3], [(1, 0)], follow=True, strict=False)["grants"] == [True]


@pytest.fixture
async def redis_tokens(db_url: str) -> AsyncIterator[RedisTokens]:
    url = shared_redis_url()
    keys = cache.Keys(f"test-{uuid7().hex}")
    client = cache.async_client(url)
    try:
        yield RedisTokens(client, keys)
    finally:
        found = [k async for k in client.scan_iter(match=f"{keys.prefix}:*")]
        if found:
            await client.delete(*found)
        await client.aclose()


def request_of(limit: RateLimit, jobs: int) -> TokenRequest:
    request = TokenRequest()
    index = request.bucket("q:default", limit)
    request.firsts = [index] * jobs
    request.seconds = [0] * jobs
    return request


async def test_redis_store_needs_adopting_then_counts_a_sliding_window(
    redis_tokens: RedisTokens, db_url: str
) -> None:
    request = request_of(RateLimit(3, 1000), 5)
    with pytest.raises(limits.RedisUnadopted):
        await redis_tokens.take(request, "w:1")
    async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
        await redis_tokens.adopt(conn, strict=True)  # never used before: no wait
    answer = await redis_tokens.take(request, "w:2")
    assert answer.grants == [True, True, True, False, False]
    assert 1000 <= answer.waits_ms[0] <= 1050  # the window plus its started_at guard
    await redis_tokens.release(request, answer, "w:2")  # a claim that failed gives back
    assert (await redis_tokens.take(request, "w:3")).grants == [True, True, True, False, False]


async def test_redis_that_lost_its_state_waits_one_window(
    redis_tokens: RedisTokens, db_url: str
) -> None:
    request = request_of(RateLimit(3, 1000), 1)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        async with conn.transaction():
            await redis_tokens.adopt(conn, strict=True)
        assert (await redis_tokens.take(request, "w:1")).grants == [True]
        await redis_tokens.client.delete(redis_tokens.keys.limits_marker)  # a restart
        async with conn.transaction():
            await redis_tokens.adopt(conn, strict=True)
    lost = await redis_tokens.take(request, "w:2")
    assert lost.grants == [False] and 900 <= lost.waits_ms[0] <= 1050


async def test_back_from_postgres_copies_its_log_into_redis(
    redis_tokens: RedisTokens, db_url: str, db: Any
) -> None:
    db.execute("UPDATE job_rate_state SET store = 'postgres'")
    assert take_pg(db, ["q:default"], [3], [(1, 0), (1, 0)], follow=True)["grants"] == [True, True]
    async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
        await redis_tokens.adopt(conn, strict=True)
    assert rows(db, "SELECT store FROM job_rate_state") == [{"store": "redis"}]
    # Two of the three starts of this window were granted by Postgres.
    answer = await redis_tokens.take(request_of(RateLimit(3, 1000), 3), "w:1")
    assert answer.grants == [True, False, False]
    # And the Postgres store now sends claims to Redis.
    assert take_pg(db, ["q:default"], [3], [(1, 0)], follow=True)["use_redis"] is True


async def test_worker_keeps_claiming_through_a_dead_redis(db_url: str, db: Any) -> None:
    """Redis URL pointing at nothing: limits fall back to Postgres (after waiting one
    window, fail closed), and the jobs run."""
    settings = make_settings(db_url, JOBS_REDIS_URL="redis://127.0.0.1:1/0", LOG_LEVEL="info")
    app = App(settings, builtin_types=False)

    @app.handler("noop")
    async def noop(ctx: pgjobs.JobContext, payload: Any) -> None:
        return None

    try:
        async with app.connection() as conn:
            await limits.set_queue_limit(conn, "default", 4, 500)
        await app.create_many(app.build("noop", {}) for _ in range(8))
        began = time.monotonic()
        await run_until_done(app, db, 8, concurrency=10, timeout=15)
        assert time.monotonic() - began >= 0.5
    finally:
        await app.close()
    assert max_in_window(starts_of(db), 0.5) <= 4
    assert rows(db, "SELECT store FROM job_rate_state") == [{"store": "postgres"}]


def test_redis_keys_are_namespaced_per_database() -> None:
    keys = cache.Keys("shop")
    assert keys.bucket("q:default") == "pgjobs:{shop}:rl:q:default"
    assert keys.jobs_channel == "pgjobs:{shop}:jobs"
    assert keys.events_channel == "pgjobs:{shop}:events"
    assert redis.Redis  # the client library is a hard dependency


async def test_limiter_is_inactive_without_limits(app: App) -> None:
    limiter = RateLimiter(app.settings, uuid7(), ["default"])
    assert limiter.active  # configuration not read yet
    await limiter.refresh(await app.pool())
    assert not limiter.active
    async with app.connection() as conn:
        await limits.set_key_limit(conn, "k", 1, 1000)
    await limiter.refresh(await app.pool())
    assert limiter.active
    await limiter.stop()
    await asyncio.sleep(0)


def test_limiter_forgets_exhausted_buckets(settings: Settings) -> None:
    limiter = RateLimiter(settings, uuid7(), ["default"])
    request = TokenRequest()
    for n in range(5000):
        request.bucket(f"k:tenant-{n}", RateLimit(1, 1000))
    answer = limits.TokenAnswer([], [500] * 4999 + [60_000], None)
    limiter.note_waits(request, answer)
    exhausted = limiter.exhausted()
    assert len(exhausted) == 4 * limits.MAX_EXCLUDED  # bounded, newest kept
    assert (exhausted[0], exhausted[-1]) == ("k:tenant-1000", "k:tenant-4999")
    # Expired waits are forgotten, so the worker never spins on a stale one.
    wait_until(lambda: limiter.exhausted() == ["k:tenant-4999"], message="short waits expired")
    assert limiter.ready_in() is not None and limiter.ready_in() > 50  # type: ignore[operator]
