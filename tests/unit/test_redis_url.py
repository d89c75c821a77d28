"""JOBS_REDIS_URL as the specification writes it: ioredis/BullMQ options translated or
dropped, TLS options mapped to redis-py's, a cluster seed list refused in one line, and
no string at all that ends in a traceback."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from pgjobs.app import App
from pgjobs.config import load_settings
from pgjobs.errors import ConfigError
from pgjobs.redisurl import OPTIONS, RedisURL, RedisURLError, parse_redis_url
from pgjobs.signals import redis_client
from tests.conftest import TEST_ENV

SPEC_POOLING = "redis://localhost:6379?maxRetriesPerRequest=3&enableReadyCheck=true"
SPEC_TLS = "rediss://username:password@redis-host:6380?tls=true"
SPEC_TLS_CA = "rediss://redis-host:6380?tls=true&ca=/path/to/ca.crt"
SPEC_CLUSTER = "redis://redis-cluster-1:6379,redis-cluster-2:6379,redis-cluster-3:6379"
SPEC_PASSWORD = "redis://:your-strong-redis-password@localhost:6379"

CLUSTER_LINE = (
    "JOBS_REDIS_URL lists several servers, a Redis Cluster: pgjobs supports one Redis "
    "server only. Redis is optional (pgjobs uses it for wake-ups, rate-limit tokens and "
    "job events, and does all of that in PostgreSQL without it): give the URL of one "
    "server, or leave JOBS_REDIS_URL unset"
)


@pytest.mark.parametrize(
    ("url", "kwargs", "ignored"),
    [
        (
            SPEC_POOLING,
            {"host": "localhost", "port": 6379, "ssl": False},
            ("maxRetriesPerRequest", "enableReadyCheck"),
        ),
        (
            SPEC_TLS,
            {
                "host": "redis-host",
                "port": 6380,
                "ssl": True,
                "username": "username",
                "password": "password",
            },
            (),
        ),
        (
            SPEC_TLS_CA,
            {"host": "redis-host", "port": 6380, "ssl": True, "ssl_ca_certs": "/path/to/ca.crt"},
            (),
        ),
        (
            SPEC_PASSWORD,
            {
                "host": "localhost",
                "port": 6379,
                "ssl": False,
                "password": "your-strong-redis-password",
            },
            (),
        ),
        (
            "redis://cache?tls=true&ca=/etc/ca.pem&cert=/etc/c.pem&key=/etc/k.pem"
            "&rejectUnauthorized=false",
            {
                "host": "cache",
                "port": 6379,
                "ssl": True,
                "ssl_ca_certs": "/etc/ca.pem",
                "ssl_certfile": "/etc/c.pem",
                "ssl_keyfile": "/etc/k.pem",
                "ssl_cert_reqs": "none",
                "ssl_check_hostname": False,
            },
            (),
        ),
        (
            "redis://cache:6379/3?connectTimeout=2500&commandTimeout=500&connectionName=w1"
            "&keyPrefix=bull",
            {
                "host": "cache",
                "port": 6379,
                "ssl": False,
                "db": 3,
                "socket_connect_timeout": 2.5,
                "socket_timeout": 0.5,
                "client_name": "w1",
            },
            ("keyPrefix",),
        ),
        (
            "redis://u%40x:p%3Aw@[::1]:7000?db=12&password=other&socket_timeout=3",
            {
                "host": "::1",
                "port": 7000,
                "ssl": False,
                "db": 12,
                "username": "u@x",
                "password": "other",
                "socket_timeout": 3.0,
            },
            (),
        ),
        ("unix:///run/redis.sock?db=2", {"unix_socket_path": "/run/redis.sock", "db": 2}, ()),
        ("REDIS://Cache", {"host": "cache", "port": 6379, "ssl": False}, ()),
    ],
)
def test_urls_translate_to_redis_py_arguments(
    url: str, kwargs: dict[str, Any], ignored: tuple[str, ...]
) -> None:
    assert parse_redis_url(url) == RedisURL(kwargs, ignored)


MALFORMED = "must be a URL like redis://host:6379/0 (or rediss://, unix://) (got {!r})"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (SPEC_CLUSTER, CLUSTER_LINE.removeprefix("JOBS_REDIS_URL ")),
        ("rediss://:pw@a:6379,b:6379/0", CLUSTER_LINE.removeprefix("JOBS_REDIS_URL ")),
        ("redis://cache?ca=/etc/ca.pem", "option ca needs TLS: use rediss:// or add tls=true"),
        ("rediss://cache?tls=false", "rediss:// always uses TLS: tls=false contradicts it"),
        ("unix:///s.sock?tls=true", "a unix:// socket does not use TLS: drop the tls option"),
        ("redis://cache?db=x", "option db must be a database number (0, 1, ...) (got 'x')"),
        ("redis://cache/abc", "path must be a database number like /0 (got 'abc')"),
        ("redis://cache?tls=maybe", "option tls must be true or false (got 'maybe')"),
        ("redis://cache?password=", "option password must be a non-empty text"),
        (
            "redis://cache?connectTimeout=-1",
            "option connectTimeout must be a number of milliseconds above 0, at most "
            "86400000 (got '-1')",
        ),
        ("redis://cache?db=1&db=2", "gives the option db twice"),
        (
            "rediss://cache?rejectUnauthorized=false&ssl_check_hostname=true",
            "ssl_check_hostname=true contradicts rejectUnauthorized: a host name is only "
            "checked in a verified certificate",
        ),
        ("redis://cache?tls=true&ssl=true", "gives ssl twice (tls and ssl)"),
        ("redis://cache:99999", MALFORMED.format("redis://cache:99999")),
        ("redis://[::1", MALFORMED.format("redis://[::1")),
        ("redis://:secret@ho st", MALFORMED.format("redis://:***@ho st")),
    ],
)
def test_unusable_urls_are_one_line_config_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"JOBS_REDIS_URL": url}, env_file=None)
    assert str(raised.value) == f"JOBS_REDIS_URL {problem}"
    assert raised.value.variable == "JOBS_REDIS_URL"


def test_an_app_with_a_cluster_url_is_refused_before_it_starts() -> None:
    hand_made = load_settings(TEST_ENV, env_file=None).replace(redis_url=SPEC_CLUSTER)
    with pytest.raises(ConfigError) as raised:
        App(hand_made)
    assert str(raised.value) == CLUSTER_LINE


def test_a_tls_url_gives_redis_py_its_ssl_settings() -> None:
    url = "rediss://redis-host:6380/11?tls=true&ca=/path/to/ca.crt&cert=/c.pem&key=/k.pem"
    for client in (redis_client.sync_client(url), redis_client.async_client(url)):
        pool = client.connection_pool
        assert pool.connection_class.__name__ == "SSLConnection"
        kwargs = pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis-host", 6380, 11)
        assert kwargs["ssl_ca_certs"] == "/path/to/ca.crt"
        assert (kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == ("/c.pem", "/k.pem")
        assert kwargs["ssl_cert_reqs"] == "required" and kwargs["ssl_check_hostname"] is True
        assert kwargs["socket_timeout"] == redis_client.TIMEOUT_S


def test_dropped_options_are_named_once_per_process(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_client, "_warned", set())
    caplog.set_level(logging.WARNING, logger="pgjobs.redis")
    for _ in range(3):
        redis_client.sync_client(SPEC_POOLING)
        redis_client.async_client(SPEC_POOLING)
    assert [r.getMessage() for r in caplog.records] == [
        "JOBS_REDIS_URL: ignoring maxRetriesPerRequest, enableReadyCheck (options of other "
        "Redis clients, such as ioredis and BullMQ, that mean nothing to redis-py)"
    ]


def _check(text: str) -> None:
    """Either a translation redis-py accepts or a one-line RedisURLError."""
    try:
        parsed = parse_redis_url(text)
    except RedisURLError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 600
        return
    client = redis.Redis(**parsed.kwargs)  # builds the pool; connects only when used
    client.close()
    try:
        load_settings({"JOBS_REDIS_URL": text}, env_file=None)
    except ConfigError as exc:  # only a value that is blank after stripping is skipped
        raise AssertionError(f"parsed, yet the settings refuse it: {exc}") from None


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_any_string_gives_a_translation_or_a_clean_error(text: str) -> None:
    _check(text)


OPTION_NAMES = st.sampled_from([*OPTIONS, "maxRetriesPerRequest", "enableReadyCheck", "x"])
VALUES = st.one_of(
    st.sampled_from(["", "0", "1", "true", "false", "3.5", "-1", "nan", "1e400", "none", "/f"]),
    st.text(max_size=12),
)
URLS = st.builds(
    lambda scheme, auth, hosts, path, options: (
        f"{scheme}://{auth}{hosts}{path}" + ("?" + "&".join(f"{k}={v}" for k, v in options))
        if options
        else f"{scheme}://{auth}{hosts}{path}"
    ),
    st.sampled_from(["redis", "rediss", "unix", "REDIS", "http"]),
    st.sampled_from(["", "user:pw@", ":pw@", "u%zz:p%40@", "@"]),
    st.one_of(
        st.sampled_from(["localhost", "127.0.0.1:6379", "[::1]:6380", "h:0", "a:1,b:2", ""]),
        st.text(max_size=20),
    ),
    st.sampled_from(["", "/", "/0", "/15", "/x", "/run/redis.sock", "//"]),
    st.lists(st.tuples(OPTION_NAMES, VALUES), max_size=4),
)


@settings(max_examples=600, deadline=None)
@given(URLS)
def test_any_url_shaped_string_gives_a_translation_or_a_clean_error(text: str) -> None:
    _check(text)
