"""`pgjobs worker --processes N`: N single-process workers, restarted when one dies.

The workers are forked from the supervisor once it has imported pgjobs and loaded the
app, so a worker starts claiming within milliseconds instead of importing everything
again in a new interpreter (most of the start-up). A fork is safe only while this
process holds nothing a child could inherit half-way: the supervisor never starts a
thread (its log relay reads the pipes in its one thread, see cli.logs.LogRelay), an
event loop, a pool or a connection; each child makes its own. Should the app's module have started
a thread all the same, the workers are started as new interpreters instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from pgjobs.cli.logs import LogRelay, LogTarget, PipeHandler, install

RESTART_PAUSE = 0.5  # seconds between a worker's death and its replacement
TICK = 0.2  # seconds between looks at the children while no record arrives
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("pgjobs.supervisor")


class Child(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, signum: int) -> None: ...

    def kill(self) -> None: ...


class Forked:
    """A worker forked from this process (the interface of subprocess.Popen it uses)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def supervise(run: Callable[[], None], processes: int, target: LogTarget, argv: list[str]) -> int:
    """Run `processes` workers, each calling `run()`, and restart any that dies.

    The children's log records come here over a pipe each and are written by this
    process alone (see cli.logs): one writer per log file, whatever the number of
    processes, so size-based rotation stays correct and JSON lines never interleave.
    `argv` starts a worker as a new interpreter when forking is not safe."""
    relay = LogRelay()

    def start_child() -> Child:
        fd = relay.pipe()
        try:
            if threading.active_count() > 1:
                command = [sys.executable, "-m", "pgjobs", *argv, "--processes", "1"]
                return subprocess.Popen([*command, "--log-pipe", str(fd)], pass_fds=(fd,))
            return Forked(fork(lambda: run_child(run, fd, target, relay)))
        finally:
            os.close(fd)  # the child holds the write end now: EOF when it exits

    children: dict[int, Child] = {}
    restarts: dict[int, float] = {}  # index -> when to start its replacement
    stop_signal: int | None = None

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stop_signal
        if stop_signal is not None:
            for child in children.values():
                child.kill()
            os._exit(1)
        stop_signal = signum
        for child in children.values():
            child.send_signal(signum)

    def spawn(index: int) -> None:
        children[index] = child = start_child()
        if stop_signal is not None:  # arrived while it was being started
            child.send_signal(stop_signal)

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)
    for index in range(processes):
        if stop_signal is None:
            spawn(index)
    while True:
        relay.pump(TICK)
        for index, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            del children[index]
            if stop_signal is None:
                log.warning("worker process %d exited with %s; restarting", child.pid, code)
                restarts[index] = time.monotonic() + RESTART_PAUSE
        if stop_signal is not None:
            restarts.clear()
        for index, when in list(restarts.items()):
            if time.monotonic() >= when:
                del restarts[index]
                spawn(index)
        if stop_signal is not None and not children:
            relay.close()
            return 0


def fork(child: Callable[[], int]) -> int:
    """Fork; the child runs `child()` and exits with the status it returns.

    The stop signals are blocked across the fork: one arriving before the child has put
    the default handlers back would run the supervisor's handler in the child."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            os._exit(exit_status(child))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return pid


def exit_status(body: Callable[[], int]) -> int:
    """`body()`'s status, as the interpreter would exit with it, its output flushed.
    Never returns past the fork into the supervisor's code."""
    status = 1
    try:
        status = body()
    except SystemExit as exc:
        code = exc.code
        status = code if isinstance(code, int) else 0 if code is None else 1
        if not isinstance(code, int | None):
            print(code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    return status


def run_child(run: Callable[[], None], fd: int, target: LogTarget, relay: LogRelay) -> int:
    """A forked worker: its records go over its pipe, then it runs."""
    relay.close_in_child()
    install(PipeHandler(fd, target.format), target.level)
    run()
    return 0
