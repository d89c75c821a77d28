"""Where the log records of `pgjobs worker` and `pgjobs server` go: stderr, or a file
(JOBS_LOG_FILE / --log-file), as text lines or JSON lines (JOBS_LOG_FORMAT).

With a file, records go to the file only: a process run by systemd or docker logs to
stderr and leaves the file unset, while one given a file is expected to keep its
terminal or journal quiet. Stderr keeps what stops the process before logging works
(the one-line `error:` of a bad setting or an unwritable log path) and one line saying
where the log is.

Several worker processes (`--processes N`) share one file through the supervisor:
each child sends its records, one JSON line each, over a pipe of its own to the
supervisor, which alone opens, writes and rotates the file. RotatingFileHandler
renames files behind the back of any other process holding them open, so two
processes rotating one file lose or duplicate records (and rotate far too often);
a single writer rotates exactly when the limit is reached and never interleaves two
records. Separate files per process would be safe too, but every reader (`tail -f`,
logrotate, a shipper) would have to know how many processes run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import select
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from pgjobs.cli.common import fail
from pgjobs.cli.output import block, echo
from pgjobs.config import LOG_FORMATS, Settings, log_file

F = TypeVar("F", bound=Callable[..., Any])

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# What a child sends of a record: enough to format it again in the supervisor.
_RECORD_FIELDS = (
    "name",
    "levelno",
    "levelname",
    "created",
    "msecs",
    "process",
    "processName",
    "thread",
    "threadName",
    "exc_text",
    "stack_info",
    "job",
)


class LogFileError(Exception):
    """The log file cannot be created or written (said in one line)."""


@dataclass(frozen=True, slots=True)
class LogTarget:
    path: str | None  # None: stderr
    format: str  # text or json
    max_bytes: int  # 0: no rotation (WatchedFileHandler, for logrotate)
    backups: int
    level: str


def log_target(settings: Settings, path: str | None, fmt: str | None) -> LogTarget:
    """The settings with --log-file / --log-format applied over them."""
    return LogTarget(
        path=log_file(path) if path else settings.log_file,
        format=fmt.lower() if fmt else settings.log_format,
        max_bytes=settings.log_max_bytes,
        backups=settings.log_backups,
        level=settings.log_level,
    )


class EscapingFormatter(logging.Formatter):
    """Log lines carry job error messages and other stored text: control characters
    are escaped before they reach the terminal (see cli.output)."""

    def format(self, record: logging.LogRecord) -> str:
        return block(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message, pid,
    the job's fields when the record is about a job (the `job` extra: job_id, type,
    queue, attempt, duration_ms, ...), and the exception's traceback if any.

    ASCII-only output: a control character or a bidirectional override in a job's error
    message stays an escape in the file instead of acting on the terminal that tails it."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        job = getattr(record, "job", None)
        if isinstance(job, dict):
            entry.update({k: v for k, v in job.items() if k not in entry})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else EscapingFormatter(TEXT_FORMAT)


def file_handler(target: LogTarget) -> logging.Handler:
    """The handler writing `target.path`, its directory created if missing. Raises
    LogFileError if the file cannot be written, so the process stops before it starts
    work rather than running without a log."""
    assert target.path is not None
    path = Path(target.path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler
        if target.max_bytes > 0:
            # Rotation renames the file and creates a new one: the directory must be
            # writable too, or the first rollover fails on every record after it.
            if not os.access(path.parent, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied", str(path.parent))
            handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=target.max_bytes, backupCount=target.backups, encoding="utf-8"
            )
        else:
            handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, FileExistsError | NotADirectoryError):
            reason = "Not a directory"  # mkdir met a file where a directory should be
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise LogFileError(f"cannot write the log file {path}: {reason}{where}") from None
    handler.setFormatter(formatter(target.format))
    return handler


def install(handler: logging.Handler, level: str) -> None:
    """Make `handler` the one handler of the root logger, at LOG_LEVEL `level`."""
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


def configure(target: LogTarget) -> None:
    """Route this process's records as `target` says (raises LogFileError)."""
    if target.path is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter(target.format))
    else:
        handler = file_handler(target)
    install(handler, target.level)


# ---------------------------------------------------------------- several processes


class PipeHandler(logging.Handler):
    """In a worker process started by the supervisor: each record goes as one JSON line
    over the pipe `fd` to the supervisor, which writes the log file. Should the
    supervisor be gone, records go to stderr instead of being lost."""

    def __init__(self, fd: int, fmt: str) -> None:
        super().__init__()
        os.set_inheritable(fd, False)  # a job's subprocess must not hold the pipe open
        self.fd = fd
        self._fallback: logging.Handler | None = None
        self._fmt = fmt
        self._exc_formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        if self._fallback is not None:
            self._fallback.handle(record)
            return
        try:
            data = (json.dumps(self._encode(record), default=str) + "\n").encode()
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            self._fallback = logging.StreamHandler(sys.stderr)
            self._fallback.setFormatter(formatter(self._fmt))
            self._fallback.handle(record)
        except Exception:
            self.handleError(record)

    def _encode(self, record: logging.LogRecord) -> dict[str, Any]:
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        encoded = {name: getattr(record, name, None) for name in _RECORD_FIELDS}
        encoded["msg"] = record.getMessage()  # formatted here: args may not be JSON
        return encoded

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        super().close()


class LogRelay:
    """In the supervisor: one pipe per worker process, read in the supervisor's one
    thread (`pump`), each record handed to this process's handlers (the log file).

    No reader threads: the supervisor forks its workers, also when it restarts one, and
    a fork taken while another thread holds a lock (a handler's, an allocator's) leaves
    the child a lock that nobody will release."""

    def __init__(self) -> None:
        self._poll = select.poll()  # no file descriptor of its own: safe across fork
        self._partial: dict[int, bytes] = {}  # read end -> the start of its next line

    def pipe(self) -> int:
        """A new pipe for a child; returns the write end (to pass, then close here)."""
        read_fd, write_fd = os.pipe()
        self._poll.register(read_fd, select.POLLIN)
        self._partial[read_fd] = b""
        return write_fd

    def pump(self, timeout: float) -> None:
        """Relay what the children wrote, waiting at most `timeout` s for something."""
        for fd, _events in self._poll.poll(max(0.0, timeout) * 1000):
            self._read(fd)

    def _read(self, fd: int) -> None:
        data = os.read(fd, 65536)
        if data:
            *lines, self._partial[fd] = (self._partial[fd] + data).split(b"\n")
        else:  # EOF: the child exited; keep a record a kill cut short
            self._poll.unregister(fd)
            os.close(fd)
            lines = [self._partial.pop(fd)]
        for line in lines:
            if line:
                dispatch(decode(line))

    def close_in_child(self) -> None:
        """In a forked child: let go of the read ends (its siblings' pipes)."""
        for fd in self._partial:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._partial = {}

    def close(self, timeout: float = 5.0) -> None:
        """Relay every child's last records (until their pipes are closed)."""
        deadline = time.monotonic() + timeout
        while self._partial and time.monotonic() < deadline:
            self.pump(deadline - time.monotonic())


def decode(line: bytes) -> logging.LogRecord:
    try:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        fields = {k: data[k] for k in (*_RECORD_FIELDS, "msg") if k in data}
        record = logging.makeLogRecord({**fields, "args": None})
        record.levelno = int(record.levelno)
        return record
    except (ValueError, TypeError, RecursionError):
        # A child killed half-way through a write: keep what arrived.
        return logging.makeLogRecord(
            {
                "name": "pgjobs.supervisor",
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "unreadable log record from a worker process: %r",
                "args": (line[:500],),
            }
        )


def dispatch(record: logging.LogRecord) -> None:
    for handler in logging.getLogger().handlers:
        if record.levelno >= handler.level:
            handler.handle(record)


def log_options(command: F) -> F:
    """--log-file and --log-format, for the commands that run until stopped."""
    command = click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS, case_sensitive=False),
        default=None,
        help="Log lines as text or JSON objects (default JOBS_LOG_FORMAT, text).",
    )(command)
    return click.option(
        "--log-file",
        metavar="PATH",
        default=None,
        help="Write the log to PATH instead of stderr, rotated by size (default "
        "JOBS_LOG_FILE; see JOBS_LOG_MAX_BYTES, JOBS_LOG_BACKUPS).",
    )(command)


def start_logging(settings: Settings, path: str | None, fmt: str | None) -> LogTarget:
    """Configure logging from the settings and the command's options; a bad path or an
    unwritable file stops the command with one line (exit 2) before it does anything."""
    if path is not None:
        try:
            log_file(path)
        except ValueError as exc:
            fail(f"--log-file must be {exc} (got {path!r})")
    target = log_target(settings, path, fmt)
    try:
        configure(target)
    except LogFileError as exc:
        fail(str(exc))
    if target.path is not None:
        echo(f"logging to {target.path}", err=True)
    return target
