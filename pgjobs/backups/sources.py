"""Which databases a `database-backup` job may dump, and with whose credentials.

A payload is data from whoever may create jobs. Dumping runs with the worker's
credentials, so a payload must not be able to point pg_dump at a server of its choosing
(which would then receive `PGPASSWORD` or the password of `DATABASE_URL`). Accepted:

- no `database`: `DATABASE_URL` itself;
- a bare name (`"production"`): that database on the `DATABASE_URL` server, with the
  credentials (and host, port, user and TLS options) of `DATABASE_URL`; only a
  PostgreSQL identifier (letters, digits, `_`, `$`, `-`), so nothing in it can act as
  a connection parameter;
- a URL (or `key=value` string) whose server (host and port) is the `DATABASE_URL`
  server, or is listed in `JOBS_BACKUP_DATABASES` (as `host:port`, any database there,
  or `host:port/dbname`, only that one).

When `JOBS_BACKUP_DATABASES` lists the `DATABASE_URL` server itself, it limits that
server too: names and URLs there must then be among the databases it lists (a
`host:port` entry without a database allows them all).

A server other than the `DATABASE_URL` one gets only the credentials the payload itself
carries, or those the worker's password file (`~/.pgpass`, `PGPASSFILE`) holds for that
very host: pg_dump runs without any other `PG*` variable of the worker, and the
worker's own connection sends an explicitly empty password so libpq never falls back
to `PGPASSWORD`. Host and port are always set explicitly, so what was checked is what
is connected to.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from pgjobs.errors import bad_field

if TYPE_CHECKING:
    from pgjobs.config import Settings

# What a payload's URL may set; anything else (hostaddr, service, passfile, options,
# ...) could redirect the connection or read files, and a backup has no use for it.
ALLOWED_PARAMS = frozenset(
    {"host", "port", "dbname", "user", "password", "sslmode", "connect_timeout"}
)
DEFAULT_PORT = "5432"
MAX_NAME = 63  # PostgreSQL's identifier length
# A PostgreSQL identifier (plus `-`, common in database names): no `=`, `/`, `?`, `@`,
# quotes or spaces that could be read as connection parameters or a URL.
_NAME = re.compile(r"[^\W\d][\w$-]*")


@dataclass(frozen=True, slots=True)
class DumpSource:
    """The database to dump: its complete connection parameters, and whether it is the
    worker's own server (where the worker's environment may be used)."""

    params: dict[str, str]
    own_server: bool

    @property
    def url(self) -> str:
        """Conninfo for the worker's own connection (password included)."""
        params = dict(self.params)
        if not self.own_server:
            params.setdefault("password", "")  # "" keeps libpq from reading PGPASSWORD
        return psycopg.conninfo.make_conninfo("", **params)

    def child_env(self) -> dict[str, str]:
        """Environment for pg_dump: the worker's, without its PG* variables for a foreign
        server (the password file stays: it holds passwords per host)."""
        if self.own_server:
            return dict(os.environ)
        return {k: v for k, v in os.environ.items() if not k.startswith("PG") or k == "PGPASSFILE"}

    def describe(self) -> str:
        host = self.params.get("host", "")
        return f"{host or 'the local socket'}:{self.params.get('port', DEFAULT_PORT)}"


def resolve(raw: str | None, settings: Settings) -> DumpSource:
    """The `database` payload field as a DumpSource, or `Discard` naming the field."""
    own = _params_of_database_url(settings)
    if raw is None:
        return DumpSource(own, own_server=True)
    if "://" not in raw and "=" not in raw:
        params = {**own, "dbname": _database_name(raw)}
        _check_own_server_list(params, own, settings)
        return DumpSource(params, own_server=True)
    if not raw.startswith(("postgresql://", "postgres://")) and "://" in raw:
        raise bad_field("database", "must be a PostgreSQL URL like postgresql://user@host/db")
    try:
        params = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(raw).items()}
    except psycopg.ProgrammingError:
        raise bad_field("database", "is not a valid PostgreSQL URL or connection string") from None
    refused = sorted(set(params) - ALLOWED_PARAMS)
    if refused:
        raise bad_field("database", f"connection parameter {refused[0]!r} is not allowed")
    params = _explicit_server(params)
    if _server(params) == _server(own):
        _check_own_server_list(params, own, settings)
        return DumpSource(params, own_server=True)
    if not _listed(params, settings.backup_databases):
        raise bad_field(
            "database",
            f"{_where(params)} is not a server backups may be taken from: only the "
            f"DATABASE_URL server ({_where(own)}) and JOBS_BACKUP_DATABASES are",
        )
    return DumpSource(params, own_server=False)


def _params_of_database_url(settings: Settings) -> dict[str, str]:
    if settings.database_url is None:
        raise bad_field("database", "required (DATABASE_URL is not set either)")
    params = psycopg.conninfo.conninfo_to_dict(settings.database_url)
    return _explicit_server({k: str(v) for k, v in params.items()})


def _explicit_server(params: dict[str, str]) -> dict[str, str]:
    """`params` with the host and port libpq would use written out, so the checked
    server is the one connected to whatever PGHOST/PGPORT say later."""
    host = params.get("host") or os.environ.get("PGHOST", "")
    port = params.get("port") or os.environ.get("PGPORT", "") or DEFAULT_PORT
    if "," in host or "," in port:
        raise bad_field("database", "must name a single host")
    out = {**params, "port": port}
    if host:
        out["host"] = host
    return out


def _server(params: dict[str, str]) -> tuple[str, str]:
    return params.get("host", "").lower(), params.get("port", DEFAULT_PORT)


def _where(params: dict[str, str]) -> str:
    host, port = _server(params)
    return f"{host or 'the local socket'}:{port}"


def _listed(params: dict[str, str], allowed: tuple[tuple[str, str, str | None], ...]) -> bool:
    host, port = _server(params)
    dbname = params.get("dbname")
    return any(
        (host, port) == (a_host, a_port) and (a_db is None or a_db == dbname)
        for a_host, a_port, a_db in allowed
    )


def _check_own_server_list(params: dict[str, str], own: dict[str, str], settings: Settings) -> None:
    """Refuse a database of the `DATABASE_URL` server that `JOBS_BACKUP_DATABASES`,
    when it lists that server, does not list."""
    host, port = _server(own)
    entries = [a for a in settings.backup_databases if (a[0], a[1]) == (host, port)]
    if not entries or _listed(params, tuple(entries)):
        return
    names = ", ".join(sorted(db for _, _, db in entries if db))
    raise bad_field(
        "database",
        f"{params.get('dbname', '')!r} is not a database backups may be taken from: "
        f"JOBS_BACKUP_DATABASES allows only {names} on the DATABASE_URL server ({_where(own)})",
    )


def _database_name(raw: str) -> str:
    if not _NAME.fullmatch(raw):
        raise bad_field(
            "database",
            f"{raw[:80]!r} is neither a database name (letters, digits, _, $ and -, not "
            "starting with a digit) nor a PostgreSQL URL",
        )
    if len(raw.encode()) > MAX_NAME:
        raise bad_field("database", f"{raw[:80]!r} is longer than {MAX_NAME} bytes")
    return raw
