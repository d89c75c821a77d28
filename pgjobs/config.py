"""Settings: every variable pgjobs reads, parsed and validated once into a frozen object.

Values come from the process environment, then from a `.env` file in the working
directory (the environment wins). An invalid value raises `ConfigError` whose message
is one line naming the variable and the expected form.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import ipaddress
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

from pgjobs.errors import ConfigError
from pgjobs.netpolicy import origin_of, parse_rules
from pgjobs.redact import MASK, mask_urls
from pgjobs.redisurl import RedisURLError, parse_redis_url

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def _positive_int(raw: str) -> int:
    value = _int(raw)
    if value < 1:
        raise ValueError("a positive integer")
    return value


def _non_negative_int(raw: str) -> int:
    value = _int(raw)
    if value < 0:
        raise ValueError("a non-negative integer")
    return value


def _int(raw: str) -> int:
    try:
        return int(raw.strip().replace("_", ""))
    except ValueError:
        raise ValueError("an integer") from None


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def _port(raw: str) -> int:
    value = _int(raw)
    if not 1 <= value <= 65535:
        raise ValueError("a TCP port between 1 and 65535")
    return value


def _postgres_url(raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    # libpq also accepts an empty host (postgresql:///db = the local socket).
    if not value.lower().startswith(("postgresql://", "postgres://")) or not (
        parts.netloc or parts.query or parts.path.strip("/")
    ):
        raise ValueError("a URL like postgresql://user:password@host:5432/dbname")
    return value


POOL_MODES = ("direct", "transaction")


def _pool_mode(raw: str) -> str:
    lowered = raw.strip().lower()
    if lowered not in POOL_MODES:
        raise ValueError("direct or transaction")
    return lowered


def _redis_url(raw: str) -> str:
    try:
        parse_redis_url(raw)
    except RedisURLError as exc:
        if exc.malformed:
            raise ValueError(str(exc)) from None
        raise ConfigError(f"JOBS_REDIS_URL {exc}", variable="JOBS_REDIS_URL") from None
    return raw.strip()


def _path(raw: str) -> str:
    if not raw.startswith("/"):
        raise ValueError("an absolute path starting with /")
    return raw.rstrip("/") or "/"


def _log_level(raw: str) -> str:
    lowered = raw.strip().lower()
    if lowered not in LOG_LEVELS:
        raise ValueError("one of " + ", ".join(LOG_LEVELS))
    return lowered


def log_format(raw: str) -> str:
    lowered = raw.strip().lower()
    if lowered not in LOG_FORMATS:
        raise ValueError(" or ".join(LOG_FORMATS))
    return lowered


def log_file(raw: str) -> str:
    """A file path, `~` expanded and made absolute (a worker may change directory, and
    the supervisor's children must name the same file)."""
    value = raw.strip()
    if value.endswith(("/", os.sep)) or value in ("~", ".", ".."):
        raise ValueError("a file path like ~/.nself/logs/plugins/jobs/worker.log")
    return os.path.abspath(os.path.expanduser(value))


def _text(raw: str) -> str:
    return raw


def _host(raw: str) -> str:
    if not raw.strip() or any(c.isspace() for c in raw.strip()):
        raise ValueError("a host name or IP address")
    return raw.strip()


def _host_list(raw: str) -> tuple[str, ...]:
    # Host names only: the Host header's port is not part of the check.
    hosts = []
    for entry in (e.strip().lower().rstrip(".") for e in raw.split(",")):
        if not entry:
            continue
        bare = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
        if ":" in bare:
            try:
                bare = str(ipaddress.IPv6Address(bare))
            except ValueError:
                raise ValueError("host names or addresses without a port") from None
        elif not bare or any(c.isspace() or c in "/@?#" for c in bare) or "*" in bare[1:]:
            raise ValueError("host names or addresses (*.example.com, *), comma-separated")
        hosts.append(bare)
    if not hosts:
        raise ValueError("host names or addresses, comma-separated")
    return tuple(hosts)


# ---- settings of the built-in job types


def _smtp_url(raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    try:
        ok = parts.scheme in ("smtp", "smtps") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a malformed port
        ok = False
    if not ok:
        raise ValueError("a URL like smtp://user:password@host:587?starttls=true (or smtps://)")
    return value


def _email_address(raw: str) -> str:
    _, address = parseaddr(raw.strip())
    if "@" not in address:
        raise ValueError("an email address like Name <jobs@example.com>")
    return raw.strip()


def _http_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("an http:// or https:// URL")
    return raw.strip()


def _origins(raw: str) -> tuple[str, ...]:
    origins = []
    for entry in (e.strip() for e in raw.split(",") if e.strip()):
        parts = urlsplit(entry)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("comma-separated origins like https://actions.internal:3000")
        origin = origin_of(entry)
        if origin is None:
            raise ValueError("comma-separated origins like https://actions.internal:3000")
        origins.append(origin)
    return tuple(origins)


def _egress_rules(raw: str) -> tuple[str, ...]:
    return parse_rules(raw)


def _path_list(raw: str) -> tuple[str, ...]:
    # The PATH convention (':'-separated) so paths may contain commas.
    paths = tuple(os.path.normpath(p.strip()) for p in raw.split(os.pathsep) if p.strip())
    if not paths or any(not os.path.isabs(p) or p == os.sep for p in paths):
        raise ValueError(f"absolute directories other than / separated by {os.pathsep!r}")
    return paths


def _directory(raw: str) -> str:
    path = os.path.normpath(raw.strip())
    if not os.path.isabs(path) or path == os.sep:
        raise ValueError("an absolute directory other than /")
    return path


def _servers(raw: str) -> tuple[tuple[str, str, str | None], ...]:
    """`host:port[/dbname]` entries, comma-separated, as (host, port, dbname or None)."""
    if "@" in raw:
        # Raised here, not as ValueError: the generic message would quote a password.
        raise ConfigError(
            "JOBS_BACKUP_DATABASES must not hold user names or passwords: list host:port "
            "entries and put the passwords in the worker's ~/.pgpass",
            variable="JOBS_BACKUP_DATABASES",
        )
    entries = []
    for item in (x.strip() for x in raw.split(",")):
        if not item:
            continue
        parts = urlsplit("//" + item.split("://", 1)[-1])
        try:
            port = parts.port or 5432
        except ValueError:
            port = 0
        dbname = parts.path.strip("/") or None
        if not parts.hostname or port == 0 or (dbname and "/" in dbname):
            raise ValueError(
                "comma-separated host:port or host:port/dbname entries, without user or "
                "password (e.g. db2.internal:5432,reports:5433/sales)"
            )
        entries.append((parts.hostname.lower(), str(port), dbname))
    if not entries:
        raise ValueError("at least one host:port entry")
    return tuple(entries)


def _encryption_key(raw: str) -> bytes:
    # Raises ConfigError itself: the generic message quotes the value, and this one is secret.
    value = raw.strip()
    key: bytes | None = None
    if len(value) == 64:
        with contextlib.suppress(ValueError):
            key = bytes.fromhex(value)
    for altchars in (None, b"-_"):  # standard or URL-safe alphabet
        if key is None:
            with contextlib.suppress(binascii.Error, ValueError):
                key = base64.b64decode(value, altchars=altchars, validate=True)
    if key is None or len(key) != 32:
        raise ConfigError(
            "JOBS_BACKUP_ENCRYPTION_KEY must be a 32-byte key given as 64 hex characters or "
            f"as base64 (got {len(value)} characters; make one with `openssl rand -hex 32`)",
            variable="JOBS_BACKUP_ENCRYPTION_KEY",
        )
    return key


def _headers(raw: str) -> tuple[tuple[str, str], ...]:
    # Raises ConfigError itself: header values are usually secrets, never quote them.
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(
            "JOBS_CUSTOM_ACTION_HEADERS must be a JSON object of header names to string "
            'values, like {"x-hasura-admin-secret": "..."}',
            variable="JOBS_CUSTOM_ACTION_HEADERS",
        )
    return tuple(value.items())


def setting(
    env: str, parse: Callable[[str], Any], default: Any = None, *, secret: bool = False
) -> Any:
    """Declare a field read from environment variable `env` (`secret`: masked in repr)."""
    return field(
        default=default, repr=not secret, metadata={"env": env, "parse": parse, "secret": secret}
    )


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = setting("DATABASE_URL", _postgres_url)
    read_database_url: str | None = setting("JOBS_READ_DATABASE_URL", _postgres_url)
    read_max_lag_ms: int = setting("JOBS_READ_MAX_LAG", _positive_int, 10000)
    redis_url: str | None = setting("JOBS_REDIS_URL", _redis_url)
    pool_mode: str = setting("JOBS_POOL_MODE", _pool_mode, "direct")
    listen_database_url: str | None = setting("JOBS_LISTEN_DATABASE_URL", _postgres_url)
    dashboard_enabled: bool = setting("JOBS_DASHBOARD_ENABLED", _bool, True)
    dashboard_port: int = setting("JOBS_DASHBOARD_PORT", _port, 3105)
    dashboard_host: str = setting("JOBS_DASHBOARD_HOST", _host, "127.0.0.1")
    dashboard_path: str = setting("JOBS_DASHBOARD_PATH", _path, "/dashboard")
    allowed_hosts: tuple[str, ...] = setting("JOBS_ALLOWED_HOSTS", _host_list, ())
    default_concurrency: int = setting("JOBS_DEFAULT_CONCURRENCY", _positive_int, 5)
    retry_attempts: int = setting("JOBS_RETRY_ATTEMPTS", _positive_int, 3)
    retry_delay_ms: int = setting("JOBS_RETRY_DELAY", _non_negative_int, 5000)
    job_timeout_ms: int = setting("JOBS_JOB_TIMEOUT", _positive_int, 60000)
    clean_completed_after_ms: int = setting(
        "JOBS_CLEAN_COMPLETED_AFTER", _non_negative_int, 86_400_000
    )
    clean_failed_after_ms: int = setting("JOBS_CLEAN_FAILED_AFTER", _non_negative_int, 604_800_000)
    log_level: str = setting("LOG_LEVEL", _log_level, "info")
    log_file: str | None = setting("JOBS_LOG_FILE", log_file)
    log_format: str = setting("JOBS_LOG_FORMAT", log_format, "text")
    log_max_bytes: int = setting("JOBS_LOG_MAX_BYTES", _non_negative_int, 10_485_760)
    log_backups: int = setting("JOBS_LOG_BACKUPS", _positive_int, 5)
    lock_duration_ms: int = setting("JOBS_LOCK_DURATION", _positive_int, 30000)
    stalled_interval_ms: int = setting("JOBS_STALLED_INTERVAL", _positive_int, 30000)
    max_stalled_count: int = setting("JOBS_MAX_STALLED_COUNT", _positive_int, 2)
    heartbeat_interval_ms: int = setting("JOBS_HEARTBEAT_INTERVAL", _positive_int, 5000)
    poll_interval_ms: int = setting("JOBS_POLL_INTERVAL", _positive_int, 1000)
    cron_misfire_grace_ms: int = setting("JOBS_CRON_MISFIRE_GRACE", _non_negative_int, 10000)
    shutdown_grace_ms: int = setting("JOBS_SHUTDOWN_GRACE", _non_negative_int, 30000)
    backoff_max_ms: int = setting("JOBS_BACKOFF_MAX", _positive_int, 3_600_000)
    max_payload_bytes: int = setting("JOBS_MAX_PAYLOAD_BYTES", _positive_int, 1_048_576)
    listen: bool = setting("JOBS_LISTEN", _bool, True)
    rate_limit_fail_open: bool = setting("JOBS_RATE_LIMIT_FAIL_OPEN", _bool, False)
    app: str | None = setting("JOBS_APP", _text)
    api_token: str | None = setting("JOBS_API_TOKEN", _text, secret=True)
    dashboard_user: str | None = setting("JOBS_DASHBOARD_USER", _text)
    dashboard_password: str | None = setting("JOBS_DASHBOARD_PASSWORD", _text, secret=True)
    dashboard_readonly: bool = setting("JOBS_DASHBOARD_READONLY", _bool, False)
    dashboard_readonly_user: str | None = setting("JOBS_DASHBOARD_READONLY_USER", _text)
    dashboard_readonly_password: str | None = setting(
        "JOBS_DASHBOARD_READONLY_PASSWORD", _text, secret=True
    )
    dashboard_secret: str | None = setting("JOBS_DASHBOARD_SECRET", _text, secret=True)
    dashboard_refresh_ms: int = setting("JOBS_DASHBOARD_REFRESH", _non_negative_int, 5000)
    smtp_url: str | None = setting("JOBS_SMTP_URL", _smtp_url, secret=True)
    smtp_from: str | None = setting("JOBS_SMTP_FROM", _email_address)
    email_templates_dir: str | None = setting("JOBS_EMAIL_TEMPLATES_DIR", _text)
    email_attachment_roots: tuple[str, ...] = setting("JOBS_EMAIL_ATTACHMENT_ROOTS", _path_list, ())
    http_max_response_bytes: int = setting("JOBS_HTTP_MAX_RESPONSE_BYTES", _positive_int, 65536)
    http_allow: tuple[str, ...] = setting("JOBS_HTTP_ALLOW", _egress_rules, ())
    http_deny: tuple[str, ...] = setting("JOBS_HTTP_DENY", _egress_rules, ())
    backup_dir: str | None = setting("JOBS_BACKUP_DIR", _directory, "/backups")
    backup_roots: tuple[str, ...] = setting("JOBS_BACKUP_ROOTS", _path_list, ())
    backup_databases: tuple[tuple[str, str, str | None], ...] = setting(
        "JOBS_BACKUP_DATABASES", _servers, ()
    )
    backup_encryption_key: bytes | None = setting(
        "JOBS_BACKUP_ENCRYPTION_KEY", _encryption_key, secret=True
    )
    backup_s3_endpoint: str | None = setting("JOBS_BACKUP_S3_ENDPOINT", _http_url)
    pg_bindir: str | None = setting("JOBS_PG_BINDIR", _path)
    cleanup_roots: tuple[str, ...] = setting("JOBS_CLEANUP_ROOTS", _path_list, ())
    custom_action_url: str | None = setting("JOBS_CUSTOM_ACTION_URL", _http_url)
    custom_action_headers: tuple[tuple[str, str], ...] = setting(
        "JOBS_CUSTOM_ACTION_HEADERS", _headers, (), secret=True
    )
    custom_action_origins: tuple[str, ...] = setting("JOBS_CUSTOM_ACTION_ORIGINS", _origins, ())

    def __repr__(self) -> str:
        # Secrets never reach a log line or a traceback: URL passwords and secret
        # settings are masked (str() is this too).
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and value not in (None, ()):
                text = repr(MASK)
            elif isinstance(value, str):
                text = repr(mask_urls(value))
            else:
                text = repr(value)
            shown.append(f"{f.name}={text}")
        return f"Settings({', '.join(shown)})"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def backup_destination_roots(self) -> tuple[str, ...]:
        """The directories database-backup may write in: JOBS_BACKUP_ROOTS, or else the
        one JOBS_BACKUP_DIR."""
        if self.backup_roots:
            return self.backup_roots
        return (self.backup_dir,) if self.backup_dir else ()

    @property
    def transaction_pooling(self) -> bool:
        """Whether DATABASE_URL leads through a pooler in transaction mode (PgBouncer's
        `pool_mode = transaction`): no session state survives a transaction there."""
        return self.pool_mode == "transaction"

    @property
    def listen_url(self) -> str | None:
        """The server the LISTEN connections (wake-ups, job events) go to:
        JOBS_LISTEN_DATABASE_URL, else DATABASE_URL unless that leads through a
        transaction pooler, which loses a LISTEN with its transaction (None then)."""
        if self.listen_database_url:
            return self.listen_database_url
        return None if self.transaction_pooling else self.database_url

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError(
                "DATABASE_URL is not set: give a URL like postgresql://user@127.0.0.1:5432/db"
            )
        return self.database_url


def variables() -> list[tuple[str, str, Any]]:
    """(variable, field name, default) for every setting, in declaration order."""
    return [(f.metadata["env"], f.name, f.default) for f in dataclasses.fields(Settings)]


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
) -> Settings:
    """Parse settings from `environ` (default: os.environ) over an optional `.env` file."""
    source: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        source.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    source.update(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = source.get(f.metadata["env"])
        if raw is None or raw.strip() == "":
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(
                f"{f.metadata['env']} must be {exc} (got {_shown(raw)})",
                variable=f.metadata["env"],
            ) from None
    return Settings(**values)


def _shown(raw: str) -> str:
    """`raw` as an error message may quote it: a URL's password masked (error lines end
    up in logs), at most 100 characters."""
    masked = mask_urls(raw)
    return repr(masked if len(masked) <= 100 else masked[:97] + "...")
