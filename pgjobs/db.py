"""Connections and the schema: how pgjobs reaches PostgreSQL and keeps its tables current."""

from __future__ import annotations

import os
import re
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, LiteralString

import psycopg
from psycopg.adapt import AdaptersMap
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from pgjobs.errors import SchemaError, ServiceUnavailable
from pgjobs.jsonlimits import load_json
from pgjobs.queries import query
from pgjobs.resources import data_path, read_text

# Our own sessions never hold a transaction open while doing other work; a stuck
# statement or an abandoned transaction must not pin vacuum or locks for long.
# JIT is off: our statements are short, and a bulk insert's sub-plans inflate the cost
# estimate enough to trigger a compile that takes longer than the insert (~0.3 s).
SESSION_OPTIONS = (
    "-c statement_timeout=60000 -c idle_in_transaction_session_timeout=60000 -c jit=off"
)

TABLES = ("jobs", "job_results", "job_failures", "job_schedules")
VIEWS = (
    "jobs_active",
    "jobs_failed_details",
    "queue_stats",
    "job_type_stats",
    "recent_failures",
    "scheduled_jobs_overview",
    "job_failure_rates",
    "job_processing_percentiles",
)


def application_name(role: str, owner: str | None = None) -> str:
    """`pgjobs:<role>:<owner>` — lets operators and tests find each connection."""
    return f"pgjobs:{role}:{owner or os.getpid()}"[:63]


# For sessions that run only a few statements written for it (the worker's claim and
# finish): one plan per statement, reused, instead of a custom plan made on every call.
# A custom plan of the claim or the finish costs about as much to make as the
# statement takes to run. A generic plan is kept while the table grows, so it must not
# follow the statistics of the moment it was made: on a table that looked empty the
# claim sorted every pending row of the (queue, status) index instead of reading the
# claim index in order. With sorts and sequential scans priced out, these statements
# keep to the index paths they were written for (tests/db/test_claim_plan.py).
GENERIC_PLANS = " -c plan_cache_mode=force_generic_plan -c enable_sort=off -c enable_seqscan=off"


# The adapters of every connection pgjobs opens: json and jsonb are decoded with
# jsonlimits.load_json, so one stored value nested too deeply (or otherwise beyond
# Python's decoder) reads as an explanation instead of failing the whole statement —
# a worker's claim of a batch, an API listing, a dashboard page.
ADAPTERS = AdaptersMap(psycopg.adapters)
set_json_loads(load_json, ADAPTERS)


def connect_kwargs(
    role: str, owner: str | None = None, *, generic_plans: bool = False, pooled: bool = False
) -> dict[str, Any]:
    """The connect() arguments of a pgjobs connection.

    `pooled`: the URL leads through a transaction-mode pooler (JOBS_POOL_MODE=transaction),
    which hands each transaction to any of its server connections. Nothing may then live
    in the session: PgBouncer refuses the `options` startup parameter, and a statement
    prepared on one server connection is unknown on the next (before PgBouncer 1.21).
    SESSION_OPTIONS are dropped with it: the timeouts are safety nets that the role's own
    settings or PgBouncer's query_timeout and idle_transaction_timeout give instead
    (docs/scaling.md), and GENERIC_PLANS need prepared statements anyway."""
    if pooled:
        return {
            "application_name": application_name(role, owner),
            "prepare_threshold": None,
            "context": ADAPTERS,
        }
    options = SESSION_OPTIONS + (GENERIC_PLANS if generic_plans else "")
    return {
        "application_name": application_name(role, owner),
        "options": options,
        "context": ADAPTERS,
    }


def describe_connect_error(url: str, exc: BaseException) -> str:
    """One line saying which server could not be reached and why."""
    reason = _reason(exc)
    if _POOLER_REFUSAL in reason:
        # PgBouncer refuses the `options` that direct connections carry.
        return (
            f"cannot connect to PostgreSQL at {_where(url)} ({reason}) — a PgBouncer in "
            "transaction pooling mode? set JOBS_POOL_MODE=transaction"
        )
    return f"cannot connect to PostgreSQL at {_where(url)} ({reason}) — check DATABASE_URL"


_POOLER_REFUSAL = "unsupported startup parameter"


# What the server says when it refuses who or what a connection asked for: a retry
# cannot help, the settings are wrong. (libpq gives no SQLSTATE for a failed connect.)
_CONFIGURATION_ERRORS = (
    "authentication failed",
    "does not exist",  # the role or the database
    "no pg_hba.conf entry",
    "not permitted to log in",
    "permission denied for database",
    "no password supplied",
    "password is required",
    "invalid connection option",
    "invalid dsn",
    "invalid uri",
    _POOLER_REFUSAL,
)


def is_configuration_error(exc: BaseException) -> bool:
    """Whether a failed connect was refused for its credentials or database name,
    rather than because the server is down, starting up or out of reach."""
    text = str(exc).lower()
    return any(marker in text for marker in _CONFIGURATION_ERRORS)


def describe_connect_retry(url: str, exc: BaseException, attempt: int, pause: float) -> str:
    """One line for a loop that failed to connect and will try again: an unreachable
    server (restarting, down) is said to be so; only wrong credentials or an unknown
    database point at DATABASE_URL."""
    retry = f"retrying in {pause:.1f} s (attempt {attempt})"
    if is_configuration_error(exc):
        return f"{describe_connect_error(url, exc)}; {retry}"
    return f"PostgreSQL at {_where(url)} is unreachable ({_reason(exc)}); {retry}"


def _where(url: str) -> str:
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        info = {}
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    return str(host) if str(host).startswith("/") else f"{host}:{port}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if "Connection refused" in text:
        return "connection refused"
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def connect_sync(
    url: str, role: str, *, autocommit: bool = True, pooled: bool = False
) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            row_factory=dict_row,
            connect_timeout=10,
            **connect_kwargs(role, pooled=pooled),
        )
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(describe_connect_error(url, exc)) from exc


async def connect_async(
    url: str, role: str, owner: str | None = None, *, autocommit: bool = True, pooled: bool = False
) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(
            url,
            autocommit=autocommit,
            row_factory=dict_row,
            connect_timeout=10,
            **connect_kwargs(role, owner, pooled=pooled),
        )
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(describe_connect_error(url, exc)) from exc


# A connection handed out within this many seconds is handed out again without a
# liveness round trip (a ping would double the cost of a one-row insert). A server that
# went away in that window surfaces as the same error as one lost mid-statement.
# The time is taken at checkout, in the check itself: marking returns would need the
# pool's `reset` hook, and a pool with one hands every returned connection to its
# background worker, so a checkout right after a return waited for that hand-over
# (~0.2 ms, a third of a one-row insert).
RECENT_USE_SECONDS = 1.0
_checked_out_at: weakref.WeakKeyDictionary[psycopg.BaseConnection[Any], float] = (
    weakref.WeakKeyDictionary()
)

# While no connection can be made, a waiting checkout asks the pool for one this often.
# psycopg_pool retries a failed connect after 1, 2, 4, 8 ... s and serves a waiting
# checkout only from such a retry, so a producer came back up to 15 s after the server
# did. Each new request of an empty pool starts a connect attempt at once instead.
CHECKOUT_RETRY_SECONDS = 0.2


def _recently_used(conn: psycopg.BaseConnection[Any]) -> bool:
    now = time.monotonic()
    last = _checked_out_at.get(conn)
    _checked_out_at[conn] = now
    if last is None or now - last >= RECENT_USE_SECONDS:
        return False
    if conn.broken or conn.closed:
        raise psycopg.OperationalError("connection is broken")
    return True


async def _check_unless_recent(conn: psycopg.AsyncConnection[Any]) -> None:
    if not _recently_used(conn):
        await AsyncConnectionPool.check_connection(conn)


def _check_unless_recent_sync(conn: psycopg.Connection[Any]) -> None:
    if not _recently_used(conn):
        ConnectionPool.check_connection(conn)


def _steps(timeout: float) -> Iterator[float]:
    """The timeouts of successive checkout attempts that together last `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        yield min(CHECKOUT_RETRY_SECONDS, left)


class RecoveringPool(AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """A pool whose checkout, while the server is away, keeps asking for a connection
    every CHECKOUT_RETRY_SECONDS until its timeout: it gets one at most that long after
    the server accepts connections again.

    With `reconnect_timeout=0` the pool gives up a failed connect after one retry and
    drops the slot; the next request of an empty pool then grows it again. Only
    checkouts are retried, never a statement: a lost connection mid-statement is the
    caller's error (its write may have committed)."""

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
        total = self.timeout if timeout is None else timeout
        for step in _steps(total):
            try:
                return await super().getconn(step)
            except PoolTimeout:
                continue
        raise PoolTimeout(f"couldn't get a connection after {total:.2f} sec")


class RecoveringSyncPool(ConnectionPool[psycopg.Connection[Any]]):
    """RecoveringPool for synchronous callers (the App's `*_sync` methods)."""

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        total = self.timeout if timeout is None else timeout
        for step in _steps(total):
            try:
                return super().getconn(step)
            except PoolTimeout:
                continue
        raise PoolTimeout(f"couldn't get a connection after {total:.2f} sec")


def make_pool(
    url: str,
    role: str,
    owner: str | None = None,
    *,
    min_size: int = 1,
    max_size: int = 4,
    check: bool = True,
    wait: float = 30.0,
    generic_plans: bool = False,
    pooled: bool = False,
) -> AsyncConnectionPool:
    """An unopened pool; open it inside the event loop that will use it.

    `check=False` skips the liveness round trip on every checkout: for the worker's hot
    path, which retries on connection errors anyway (a broken connection is discarded
    when it is returned). Otherwise only connections not handed out within the last
    RECENT_USE_SECONDS are pinged.

    `wait`: how long a checkout waits for a connection (see RecoveringPool).

    `generic_plans`: see GENERIC_PLANS; only for statements whose generic plan was
    checked (psycopg prepares a statement after its fifth run on a connection).

    `pooled`: see connect_kwargs; it overrides `generic_plans`."""
    return RecoveringPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={
            "autocommit": True,
            "row_factory": dict_row,
            **connect_kwargs(role, owner, generic_plans=generic_plans, pooled=pooled),
        },
        check=_check_unless_recent if check else None,
        reconnect_timeout=0,
        timeout=wait,
    )


def make_sync_pool(
    url: str,
    role: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    wait: float = 30.0,
    pooled: bool = False,
) -> ConnectionPool:
    """An open synchronous pool that recovers like make_pool's."""
    return RecoveringSyncPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={
            "autocommit": True,
            "row_factory": dict_row,
            **connect_kwargs(role, pooled=pooled),
        },
        check=_check_unless_recent_sync,
        reconnect_timeout=0,
        timeout=wait,
        open=True,
    )


# ---------------------------------------------------------------- schema install

# migrations/0002_rate_limits_and_job_events.sql: version 2, "rate limits and job events".
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass
class InstallReport:
    version_before: int
    version_after: int
    applied: list[Migration] = field(default_factory=list)
    server_version: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.applied)


def migrations() -> list[Migration]:
    """The upgrade steps of migrations/ (0001_initial.sql ...), in order."""
    found = []
    for path in sorted(data_path("migrations").glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise RuntimeError(f"migrations/{path.name} is not named NNNN_lowercase_words.sql")
        name = match[2].replace("_", " ")
        found.append(Migration(int(match[1]), name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations/ must be numbered 1..N without a gap, found {versions}")
    return found


def install_schema(conn: psycopg.Connection[Any], *, up_to: int | None = None) -> InstallReport:
    """Create or upgrade the schema and views in one transaction, serialised by a lock.

    An empty database gets schema.sql, the current schema, with every migration recorded
    as applied; an older one gets the migrations newer than its version, in order.
    `up_to` builds an older version from the migrations (to test upgrades of old installs).
    """
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SET LOCAL client_min_messages = warning")
        # The connection's own timeouts are missing behind a transaction pooler.
        cur.execute(query("transaction_timeouts"))
        cur.execute(query("init_lock"))
        installed = _fetch(cur, query("schema_installed"))["installed"]
        before = int(_fetch(cur, query("schema_version"))["version"]) if installed else 0
        report = InstallReport(version_before=before, version_after=before)
        fresh = before == 0 and up_to is None
        if fresh:
            _apply(cur, read_text("schema.sql"), "schema.sql")
        else:
            cur.execute(query("migration_timeouts"))
        for migration in migrations():
            if migration.version <= before or (up_to is not None and migration.version > up_to):
                continue
            if not fresh:
                _apply(cur, migration.sql, f"migration {migration.version} {migration.name}")
            cur.execute(
                query("record_migration"),
                {"version": migration.version, "name": migration.name},
            )
            report.applied.append(migration)
            report.version_after = migration.version
        if up_to is None:
            _apply(cur, read_text("views.sql"), "views.sql")
            cur.execute(query("ensure_default_queues"))
        report.server_version = str(_fetch(cur, query("server_info"))["server_version"])
    return report


def _apply(cur: psycopg.Cursor[dict[str, Any]], sql: str, what: str) -> None:
    # Raising inside the transaction rolls back everything init did, so a failed
    # upgrade leaves the previous version intact.
    try:
        cur.execute(sql.encode())
    except psycopg.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SchemaError(f"{what} failed, nothing was changed: {reason}") from exc


def missing_relations(conn: psycopg.Connection[Any]) -> list[str]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query("missing_relations"), {"names": list(TABLES + VIEWS)})
        return [row["name"] for row in cur.fetchall()]


def _fetch(cur: psycopg.Cursor[dict[str, Any]], sql: LiteralString) -> dict[str, Any]:
    cur.execute(sql)
    row = cur.fetchone()
    assert row is not None
    return row
