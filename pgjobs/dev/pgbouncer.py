"""A private PgBouncer in transaction pooling mode, for the tests and `bin/bench --bouncer`:
Debian's `pgbouncer` (bin/ensure-pgbouncer installs it) on a free port of 127.0.0.1 with
its own configuration in a given directory, in front of one PostgreSQL server. Every
database of the server is reachable through it under its own name."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
POOL_SIZE = 4
# The bouncer's admin console: the database `pgbouncer`, for this user.
ADMIN_USER = "postgres"


def available() -> bool:
    return os.access(BINARY, os.X_OK)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgBouncer:
    """`pool_mode = transaction` with `pool_size` server connections per database and
    user, trust authentication (for a server that trusts local connections) and an
    admin console (`admin`)."""

    def __init__(self, directory: Path, server_url: str, *, pool_size: int = POOL_SIZE) -> None:
        self.directory = directory
        self.port = _free_port()
        self.pool_size = pool_size
        self.proc: subprocess.Popen[bytes] | None = None
        server = urlsplit(server_url)
        self.user = server.username or ADMIN_USER
        self._server_host = server.hostname or "127.0.0.1"
        self._server_port = server.port or 5432

    def url(self, direct_url: str) -> str:
        """`direct_url`'s database, reached through the bouncer."""
        parts = urlsplit(direct_url)
        return urlunsplit(parts._replace(netloc=f"{self.user}@127.0.0.1:{self.port}"))

    @property
    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        users = self.directory / "userlist.txt"
        users.write_text(f'"{self.user}" ""\n"{ADMIN_USER}" ""\n')
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={self._server_host} port={self._server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            f"admin_users = {ADMIN_USER}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            "server_login_retry = 1\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        command = [BINARY, str(config)]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root; it reads its files as the user it becomes.
            for path in (self.directory, users, config):
                path.chmod(0o755 if path.is_dir() else 0o644)
            command[1:1] = ["-u", "nobody"]
        log = (self.directory / "pgbouncer.log").open("wb")
        self.proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"pgbouncer exited at start:\n{self.log}")
            try:
                self.admin("SHOW VERSION")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"pgbouncer did not start:\n{self.log}") from None
                time.sleep(0.05)

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run one command on the admin console (SHOW ..., RECONNECT, KILL, RESUME)."""
        conninfo = f"host=127.0.0.1 port={self.port} dbname=pgbouncer user={ADMIN_USER}"
        # The console speaks only the simple query protocol.
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=2) as conn:
            cur = psycopg.ClientCursor(conn)
            cur.execute(command.encode())
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # immediate shutdown
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
