"""Redis, the optional cache beside PostgreSQL: clients, key names, an outage breaker and
a reconnecting pub/sub subscriber.

Redis carries rate-limit tokens, wake-ups and job events, never job data, and nothing
here is ever required: every caller has a PostgreSQL path for when Redis is not
configured or down. Clients therefore fail fast (short timeouts, no retries) and a
`Breaker` keeps a dead Redis from costing a timeout on every call.

Keys and channels are namespaced `pgjobs:{<database name>}:...`, so installations that
share one Redis keep apart, and the braces (a Redis Cluster hash tag) put all keys of
one installation in one slot, as the rate-limit script needs.

redis-py is imported only when a client is made or `ERRORS` is first read: importing it
takes most of a second, which every `pgjobs` command and worker process would pay
even with Redis not configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgjobs.backoff import ReconnectDelay
from pgjobs.errors import ConfigError
from pgjobs.redisurl import RedisURL, RedisURLError, parse_redis_url

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

    # What a failing Redis call raises (a refused or reset connection is also an
    # OSError); built by __getattr__ below on first use.
    ERRORS: tuple[type[BaseException], ...]

log = logging.getLogger("pgjobs.redis")

TIMEOUT_S = 1.0
BREAK_S = 2.0


def __getattr__(name: str) -> Any:
    if name == "ERRORS":
        import redis

        errors = (redis.RedisError, OSError, asyncio.TimeoutError)
        globals()["ERRORS"] = errors
        return errors
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = globals().get("ERRORS") or __getattr__("ERRORS")
    return errors


class Keys:
    """Key and channel names of one installation (one PostgreSQL database)."""

    def __init__(self, database: str) -> None:
        self.prefix = f"pgjobs:{{{database}}}"
        self.jobs_channel = f"{self.prefix}:jobs"
        self.events_channel = f"{self.prefix}:events"
        self.limits_marker = f"{self.prefix}:rl:since"

    def bucket(self, name: str) -> str:
        return f"{self.prefix}:rl:{name}"


def checked_url(url: str) -> RedisURL:
    """`url` translated for redis-py, or ConfigError saying in one line why it cannot be
    used (settings made with `Settings.replace` skip load_settings' check)."""
    try:
        return parse_redis_url(url)
    except RedisURLError as exc:
        raise ConfigError(f"JOBS_REDIS_URL {exc}", variable="JOBS_REDIS_URL") from None


# The ignored option lists already named in a warning: one line per process, not one
# per client (a worker makes several, and again after each outage).
_warned: set[tuple[str, ...]] = set()


def client_kwargs(url: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """The keyword arguments of `redis.Redis` (or its asyncio twin) for `url`, timeouts
    `timeout` unless the URL sets its own. Options of other Redis clients are dropped
    with one warning per process; a URL pgjobs cannot use raises ConfigError."""
    parsed = checked_url(url)
    if parsed.ignored and parsed.ignored not in _warned:
        _warned.add(parsed.ignored)
        log.warning(
            "JOBS_REDIS_URL: ignoring %s (options of other Redis clients, such as "
            "ioredis and BullMQ, that mean nothing to redis-py)",
            ", ".join(parsed.ignored),
        )
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, **parsed.kwargs}


def async_client(url: str) -> aioredis.Redis:
    """An asyncio client that fails within a second instead of retrying."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff

    return aioredis.Redis(**client_kwargs(url), retry=AsyncRetry(NoBackoff(), 0))


def sync_client(url: str, timeout: float = TIMEOUT_S) -> redis.Redis:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(**client_kwargs(url, timeout), retry=Retry(NoBackoff(), 0))


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text[:200]


class Breaker:
    """After a failure, Redis is skipped for `pause` seconds; one log line per outage."""

    def __init__(self, what: str, pause: float = BREAK_S) -> None:
        self.what = what
        self.pause = pause
        self._open_until = 0.0
        self._down = False

    @property
    def closed(self) -> bool:
        """True when Redis may be tried."""
        return time.monotonic() >= self._open_until

    def failed(self, exc: BaseException) -> None:
        self._open_until = time.monotonic() + self.pause
        if not self._down:
            self._down = True
            log.warning("redis unavailable for %s (%s); using PostgreSQL", self.what, describe(exc))

    def succeeded(self) -> None:
        if self._down:
            self._down = False
            log.info("redis is back for %s", self.what)


class Subscriber:
    """Delivers the messages of Redis channels to a callback and never gives up: after
    any error it logs one line, waits, reconnects and subscribes again, then calls
    `on_reconnect` (messages published meanwhile are lost; callers look once)."""

    def __init__(
        self,
        url: str,
        channels: list[str],
        on_message: Callable[[str, bytes], None],
        *,
        on_reconnect: Callable[[], None] | None = None,
        name: str = "pgjobs-redis-subscriber",
    ) -> None:
        self._url = url
        self._channels = channels
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self._name = name
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delay = ReconnectDelay()
        first = True
        down = False
        while not self._stopping:
            client = async_client(self._url)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._channels)
                self.connected.set()
                delay.reset()
                if down:
                    log.info("redis subscription %s is back", ",".join(self._channels))
                    down = False
                if not first and self._on_reconnect is not None:
                    self._on_reconnect()
                first = False
                while not self._stopping:
                    # A read timeout only means "no message yet": get_message returns None.
                    message = await pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        self._deliver(message)
            except _errors() as exc:
                self.connected.clear()
                if not down:
                    log.warning(
                        "redis subscription %s lost (%s); retrying",
                        ",".join(self._channels),
                        describe(exc),
                    )
                    down = True
                await asyncio.sleep(delay.next())
            finally:
                self.connected.clear()
                with contextlib.suppress(*_errors()):
                    await pubsub.aclose()
                with contextlib.suppress(*_errors()):
                    await client.aclose()

    def _deliver(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        data = message["data"]
        try:
            self._on_message(name, data if isinstance(data, bytes) else str(data).encode())
        except Exception:  # a consumer's bug must not end the subscription
            log.exception("handling a redis message on %s failed", name)
