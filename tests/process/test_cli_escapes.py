"""The CLI never prints a terminal control sequence it read from the database.

A job type written by SQL (the producers validate types, a database login need not)
and an error message, which is whatever the handler's exception said, reach the
operator's terminal through `pgjobs jobs`, `pgjobs retry` and `pgjobs get`; raw, an
OSC sequence retitles the terminal and a CSI sequence clears it.
"""

from __future__ import annotations

from typing import Any

import psycopg

from tests.opsdata import insert_job
from tests.pgjobs_cli import one_line_error_problem, run_against

Conn = psycopg.Connection[dict[str, Any]]

TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J"
CSI_C1 = "\x9b2J"  # the one-character CSI: JSON output does not escape it by itself
HOSTILE_TYPE = f"mail{TITLE}{CLEAR}"
HOSTILE_ERROR = f"SMTP said {TITLE}{CLEAR}{CSI_C1} goodbye"
RAW = ("\x1b", "\x07", "\x9b")


def hostile_failed_job(db: Conn) -> Any:
    job_id = insert_job(
        db, type=HOSTILE_TYPE, status="failed", attempts=3, last_error=HOSTILE_ERROR
    )
    db.execute(
        "UPDATE job_failures SET error_message = %s WHERE job_id = %s", (HOSTILE_ERROR, job_id)
    )
    return job_id


def test_cli_output_escapes_control_characters_from_the_database(db_url: str, db: Conn) -> None:
    job_id = hostile_failed_job(db)
    outputs = {
        "jobs": run_against(db_url, "jobs", "--status", "failed"),
        "retry --show": run_against(db_url, "retry", "--show"),
        "get": run_against(db_url, "get", str(job_id)),
        "retry --id": run_against(db_url, "retry", "--id", str(job_id)),
    }
    for name, result in outputs.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
        printed = result.stdout + result.stderr
        assert not any(c in printed for c in RAW), f"{name} printed {printed!r}"
    assert "mail\\x1b]0;pwned\\x07\\x1b[2J" in outputs["jobs"].stdout
    assert "SMTP said \\x1b]0;pwned\\x07\\x1b[2J\\x9b2J goodbye" in outputs["retry --show"].stdout
    assert "\\x9b2J" in outputs["get"].stdout
    assert "retried" in outputs["retry --id"].stdout


def test_cli_error_lines_escape_control_characters(db_url: str) -> None:
    # A message a user can steer: the ids and names are quoted back in the error.
    for args in (
        ["get", f"{TITLE}{CLEAR}"],
        ["pause", f"q{TITLE}{CLEAR}"],
        ["enqueue", "t", "--payload", f'{{"a": 1}}{CSI_C1}'],
    ):
        result = run_against(db_url, *args)
        assert one_line_error_problem(result) is None, result
        assert not any(c in result.stderr for c in RAW), result.stderr
