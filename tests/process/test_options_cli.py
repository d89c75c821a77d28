"""`pgjobs enqueue` refuses bad options with one line and exit status 2, storing nothing
(the same options through Python, REST and SQL: tests/db/test_options.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pgjobs_cli import run_pgjobs

QUEUE_RULE = "use 1-100 characters a-z 0-9 . _ : - starting with a letter or digit"
NUL_PAYLOAD = "payload contains a NUL character (\\u0000), which PostgreSQL cannot store"


def job_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) AS n FROM jobs").fetchone()
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--queue", "Bad Queue"], f"invalid queue name 'Bad Queue': {QUEUE_RULE}"),
        (
            ["--priority", "urgent"],
            "unknown priority 'urgent': use critical, high, normal, low or an integer",
        ),
        (["--payload", "[1, 2]"], "payload must be a JSON object"),
        (
            ["--payload", "{bad"],
            "--payload is not valid JSON: Expecting property name enclosed in double quotes"
            " at line 1 column 2",
        ),
        (["--payload", '{"a": "\\u0000"}'], NUL_PAYLOAD),
        (["--attempts", "0"], "attempts must be at least 1 (got 0)"),
        (["--delay", "-5"], "delay must be a non-negative number of milliseconds (got -5)"),
    ],
    ids=["queue", "priority", "payload-list", "payload-json", "payload-nul", "attempts", "delay"],
)
def test_cli_enqueue_refuses_in_one_line(
    args: list[str], message: str, db_url: str, db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    result = run_pgjobs(["enqueue", "send-email", *args], tmp_path, {"DATABASE_URL": db_url})
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"error: {message}\n")
    assert job_count(db) == 0
