"""The JSON and text log formats, and records crossing the supervisor's pipe."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest

from pgjobs.cli import logs
from pgjobs.cli.logs import (
    TEXT_FORMAT,
    EscapingFormatter,
    JsonFormatter,
    LogRelay,
    PipeHandler,
    decode,
)


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("pgjobs.worker", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_record_has_time_level_logger_message_and_job_fields() -> None:
    rec = record("job failed id=%s", "j1", job={"job_id": "j1", "type": "email", "attempt": 2})
    rec.created = 1_765_000_000.5
    entry = json.loads(JsonFormatter().format(rec))
    assert entry == {
        "time": "2025-12-06T05:46:40.500Z",
        "level": "warning",
        "logger": "pgjobs.worker",
        "message": "job failed id=j1",
        "pid": os.getpid(),
        "job_id": "j1",
        "type": "email",
        "attempt": 2,
    }


def test_json_record_carries_the_exception_and_stays_one_ascii_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        rec = record("crashed \x1b[2J \u202e", exc_info=None)
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line and line.isascii()
    entry = json.loads(line)
    assert entry["message"] == "crashed \x1b[2J \u202e"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: bad\nvalue")


def test_text_lines_escape_control_characters() -> None:
    line = EscapingFormatter(TEXT_FORMAT).format(record("error=%r", "\x1b]0;owned\x07"))
    assert line.endswith("WARNING pgjobs.worker error='\\x1b]0;owned\\x07'")


def test_a_record_crosses_the_pipe_whole() -> None:
    read_fd, write_fd = os.pipe()
    handler = PipeHandler(write_fd, "json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = record("outcome %s %d", "x", 3, job={"job_id": "j9", "duration_ms": 12})
        rec.exc_info = sys.exc_info()
    handler.handle(rec)
    handler.close()
    with os.fdopen(read_fd, "rb") as stream:
        [line] = stream.readlines()
    copy = decode(line)
    assert copy.getMessage() == "outcome x 3"
    assert (copy.name, copy.levelno, copy.process) == (
        "pgjobs.worker",
        logging.WARNING,
        rec.process,
    )
    entry = json.loads(JsonFormatter().format(copy))
    assert entry["job_id"] == "j9" and entry["duration_ms"] == 12
    assert entry["exception"].endswith("RuntimeError: boom")


def test_a_torn_line_from_a_dying_process_is_kept_as_a_warning() -> None:
    copy = decode(b'{"name": "pgjobs.worker", "msg": "half')
    assert copy.levelno == logging.WARNING and copy.name == "pgjobs.supervisor"
    assert "half" in copy.getMessage()


def test_the_relay_hands_on_whole_lines_and_a_torn_one_at_eof(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The supervisor's relay reads in its one thread: records split across reads
    arrive whole, and a child's last, torn line is kept when its pipe closes."""
    relayed: list[logging.LogRecord] = []
    monkeypatch.setattr(logs, "dispatch", relayed.append)
    relay = LogRelay()
    write_fd = relay.pipe()
    line = json.dumps({"name": "pgjobs.worker", "levelno": 30, "msg": "one"}).encode()
    os.write(write_fd, line[:10])
    relay.pump(0.5)
    assert relayed == []
    os.write(write_fd, line[10:] + b"\n" + b'{"name": "pgjobs.worker", "msg": "ha')
    relay.pump(0.5)
    assert [r.getMessage() for r in relayed] == ["one"]
    os.close(write_fd)
    relay.close(timeout=2)
    assert len(relayed) == 2 and "ha" in relayed[1].getMessage()
