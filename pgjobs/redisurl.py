"""JOBS_REDIS_URL as people write it: redis-py's own URLs plus the options of Node's
ioredis and BullMQ, translated into the keyword arguments of `redis.Redis`.

redis-py hands every query option it does not know to the connection as a keyword
argument, so `?maxRetriesPerRequest=3` (an ioredis option) makes every connection
attempt fail with a TypeError. Here each option either has a redis-py meaning (`tls`,
`ca`, `cert`, `key`, `db`, `password`, timeouts, ...) or is reported in `ignored`,
for the client to name in one warning. A URL that lists several servers (a Redis
Cluster seed list) is refused: pgjobs talks to one Redis server.

No import of redis-py here: the settings are parsed by every command, and importing
redis-py takes most of a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

HINT = "a URL like redis://host:6379/0 (or rediss://, unix://)"

CLUSTER_REFUSAL = (
    "lists several servers, a Redis Cluster: pgjobs supports one Redis server only. "
    "Redis is optional (pgjobs uses it for wake-ups, rate-limit tokens and job events, "
    "and does all of that in PostgreSQL without it): give the URL of one server, or "
    "leave JOBS_REDIS_URL unset"
)


class RedisURLError(ValueError):
    """A JOBS_REDIS_URL pgjobs cannot use; the message says why in one line and never
    quotes a password. `malformed`: not a URL at all (the message is the expected form)."""

    def __init__(self, message: str, *, malformed: bool = False) -> None:
        super().__init__(message)
        self.malformed = malformed


@dataclass(frozen=True, slots=True)
class RedisURL:
    """What a URL means: the keyword arguments for `redis.Redis(...)` (and its asyncio
    twin) and the options it gave that redis-py has no use for."""

    kwargs: Mapping[str, Any] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()

    @property
    def tls(self) -> bool:
        return bool(self.kwargs.get("ssl"))


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0 or number > 86_400:
        raise ValueError("a number of seconds above 0, at most 86400")
    return number


def _milliseconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0 or number > 86_400_000:
        raise ValueError("a number of milliseconds above 0, at most 86400000")
    return number / 1000


def _db(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise ValueError("a database number (0, 1, ...)")
    return int(value)


def _text(value: str) -> str:
    if not value or "\x00" in value:
        raise ValueError("a non-empty text")
    return value


def _file(value: str) -> str:
    if not value or "\x00" in value:
        raise ValueError("a file path")
    return value


def _cert_reqs(value: str) -> str:
    lowered = value.strip().lower()
    if lowered not in ("none", "optional", "required"):
        raise ValueError("none, optional or required")
    return lowered


def _reject_unauthorized(value: str) -> str:
    return "required" if _bool(value) else "none"


# option as written -> (redis-py keyword, parser, secret: never quoted in a message)
Option = tuple[str, Callable[[str], Any], bool]
OPTIONS: dict[str, Option] = {
    "db": ("db", _db, False),
    "password": ("password", _text, True),
    "username": ("username", _text, False),
    "tls": ("ssl", _bool, False),
    "ssl": ("ssl", _bool, False),
    "ca": ("ssl_ca_certs", _file, False),
    "ssl_ca_certs": ("ssl_ca_certs", _file, False),
    "cert": ("ssl_certfile", _file, False),
    "ssl_certfile": ("ssl_certfile", _file, False),
    "key": ("ssl_keyfile", _file, False),
    "ssl_keyfile": ("ssl_keyfile", _file, False),
    "ssl_cert_reqs": ("ssl_cert_reqs", _cert_reqs, False),
    "rejectUnauthorized": ("ssl_cert_reqs", _reject_unauthorized, False),
    "ssl_check_hostname": ("ssl_check_hostname", _bool, False),
    "socket_timeout": ("socket_timeout", _seconds, False),
    "socket_connect_timeout": ("socket_connect_timeout", _seconds, False),
    "timeout": ("socket_timeout", _seconds, False),
    "commandTimeout": ("socket_timeout", _milliseconds, False),
    "connectTimeout": ("socket_connect_timeout", _milliseconds, False),
    "client_name": ("client_name", _text, False),
    "connectionName": ("client_name", _text, False),
}

# Options that only mean something over TLS.
TLS_ONLY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


def _shown(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")


def parse_redis_url(raw: str) -> RedisURL:
    """Translate `raw`; RedisURLError (one line, no password in it) if it cannot be used."""
    text = raw.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("redis", "rediss", "unix") or not text.isprintable():
        raise RedisURLError(HINT, malformed=True)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from an undecodable environment
        raise RedisURLError(HINT, malformed=True) from None
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if scheme != "unix" and "," in netloc.rpartition("@")[2]:
        raise RedisURLError(CLUSTER_REFUSAL)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:  # a bad port or an unclosed [IPv6 address
        raise RedisURLError(HINT, malformed=True) from None
    if not (parts.netloc or parts.path):
        raise RedisURLError(HINT, malformed=True)
    kwargs: dict[str, Any] = {}
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if scheme == "unix":
        if not parts.path:
            raise RedisURLError("must name a socket, like unix:///run/redis/redis.sock")
        kwargs["unix_socket_path"] = unquote(parts.path)
    else:
        host = unquote(parts.hostname) if parts.hostname else "localhost"
        try:
            host.encode("idna")
        except UnicodeError:
            raise RedisURLError(HINT, malformed=True) from None
        if port == 0 or not host.isprintable() or any(c.isspace() for c in host):
            raise RedisURLError(HINT, malformed=True)
        kwargs["host"] = host
        kwargs["port"] = 6379 if port is None else port
        path = unquote(parts.path).strip("/")
        if path:
            try:
                kwargs["db"] = _db(path)
            except ValueError:
                raise RedisURLError(
                    f"path must be a database number like /0 (got {_shown(path)})"
                ) from None
        kwargs["ssl"] = scheme == "rediss"
    ignored: list[str] = []
    given: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        option = OPTIONS.get(name)
        if option is None:
            if name not in ignored:
                ignored.append(name)
            continue
        keyword, parse, secret = option
        if keyword in given and given[keyword] != name:
            raise RedisURLError(f"gives {keyword} twice ({given[keyword]} and {name})")
        if name in given:
            raise RedisURLError(f"gives the option {name} twice")
        given[keyword] = name
        try:
            kwargs[keyword] = parse(value)
        except ValueError as exc:
            shown = "" if secret else f" (got {_shown(value)})"
            raise RedisURLError(f"option {name} must be {exc}{shown}") from None
    if kwargs.get("ssl_cert_reqs") == "none":
        # No verification means no name check either (ssl refuses the one without
        # the other, and only when connecting).
        if kwargs.get("ssl_check_hostname"):
            raise RedisURLError(
                f"{given['ssl_check_hostname']}=true contradicts {given['ssl_cert_reqs']}: "
                "a host name is only checked in a verified certificate"
            )
        kwargs["ssl_check_hostname"] = False
    if scheme == "rediss" and not kwargs["ssl"]:
        raise RedisURLError(f"rediss:// always uses TLS: {given['ssl']}=false contradicts it")
    if scheme == "unix" and kwargs.get("ssl"):
        raise RedisURLError("a unix:// socket does not use TLS: drop the tls option")
    if not kwargs.get("ssl"):
        needs_tls = [given[k] for k in TLS_ONLY if k in given]
        if needs_tls:
            raise RedisURLError(f"option {needs_tls[0]} needs TLS: use rediss:// or add tls=true")
    return RedisURL(kwargs, tuple(ignored))
