"""Run the real `pgjobs` console script as a subprocess (server, worker, CLI lines) for
the API and CLI acceptance tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.pgjobs_cli import clean_env

PGJOBS = str(Path(sys.executable).parent / "pgjobs")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(
    args: Sequence[str], env: dict[str, str], *, timeout: float = 60, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PGJOBS, *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or tempfile.gettempdir(),
        check=False,
    )


def ctrl_c_as_in_a_terminal() -> None:
    """For a child the tests send Ctrl-C (SIGINT) to: default handling, as in a terminal.
    A suite started in the background (`cmd &` in a script) inherits SIGINT ignored,
    and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Process:
    """A long-running `pgjobs` command whose output goes to a file."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PGJOBS, *args],
            env=clean_env(**env),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
            text=True,
            preexec_fn=ctrl_c_as_in_a_terminal,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int:
        """Ctrl-C, then wait; kill if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        os.unlink(self.log.name)
        return int(self.proc.returncode)


@contextmanager
def running_server(
    db_url: str, *, port: int | None = None, extra: Sequence[str] = (), **env: str
) -> Iterator[str]:
    """`pgjobs server` on a free port; yields its base URL once /health answers."""
    port = port or free_port()
    server = Process(["server", "--port", str(port), *extra], {"DATABASE_URL": db_url, **env})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.proc.poll() is not None:
                raise AssertionError(f"pgjobs server exited early:\n{server.output()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code in (200, 503):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"pgjobs server did not start:\n{server.output()}")
            time.sleep(0.05)
        yield base
    finally:
        code = server.stop()
        assert code in (0, -signal.SIGINT), f"server exit {code}:\n{server.output()}"
