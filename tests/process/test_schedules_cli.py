"""`pgjobs schedule ...` as a user runs it: the real command line in a subprocess."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pgjobs.app import App
from pgjobs.schedules.store import schedule_fields
from tests.conftest import make_settings
from tests.opsdata import audit_rows, snapshot
from tests.pgjobs_cli import clean_env, run_pgjobs

BIN = str(Path(sys.executable).parent)
CLI_ACTOR = f"cli:{getpass.getuser()}"

# The spec's "Scheduled Jobs" section, with `pgjobs` for `nself plugin jobs`.
SPEC_CREATE = """
pgjobs schedule create \\
  --name daily-backup \\
  --type database-backup \\
  --cron "0 2 * * *" \\
  --payload '{"database": "production", "destination": "/backups"}' \\
  --desc "Daily production database backup"
"""


def shell(script: str, db_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`script` run by bash exactly as typed, with the installed `pgjobs` on PATH."""
    env = clean_env(DATABASE_URL=db_url, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def schedule_cli(db_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_pgjobs(["schedule", *args], cwd, {"DATABASE_URL": db_url})


def stored(db: Any) -> list[dict[str, Any]]:
    return db.execute("SELECT * FROM job_schedules ORDER BY name").fetchall()


def test_every_spec_command_runs_as_written(db_url: str, db: Any, tmp_path: Path) -> None:
    created = shell(SPEC_CREATE, db_url, tmp_path)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("created schedule 'daily-backup'; next run ")
    [row] = stored(db)
    assert row["type"] == "database-backup" and row["cron_expression"] == "0 2 * * *"
    assert row["payload"] == {"database": "production", "destination": "/backups"}
    assert row["description"] == "Daily production database backup"
    assert row["next_run_at"] is not None and row["timezone"] == "UTC"

    listed = shell("pgjobs schedule list", db_url, tmp_path)
    assert listed.returncode == 0, listed.stderr
    header, _rule, line = listed.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "TYPE",
        "QUEUE",
        "CRON",
        "TIMEZONE",
        "ENABLED",
        "NEXT",
        "RUN",
        "LAST",
        "RUN",
    ]
    assert line.startswith("daily-backup  database-backup  default  0 2 * * *")
    # Aligned: every column starts at the same offset in each line.
    assert header.index("TYPE") == line.index("database-backup")
    assert header.index("NEXT RUN") == line.index(row["next_run_at"].strftime("%Y-%m-%d"))

    shown = shell("pgjobs schedule show daily-backup", db_url, tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "cron          0 2 * * *" in shown.stdout
    assert "description   Daily production database backup" in shown.stdout
    assert shown.stdout.count(" 02:00:00+00:00") == 5 + 1  # next run and five upcoming

    disabled = shell("pgjobs schedule disable daily-backup", db_url, tmp_path)
    assert disabled.returncode == 0 and disabled.stdout == "disabled schedule 'daily-backup'\n"
    assert stored(db)[0]["enabled"] is False and stored(db)[0]["next_run_at"] is None

    enabled = shell("pgjobs schedule enable daily-backup", db_url, tmp_path)
    assert enabled.returncode == 0 and enabled.stdout.startswith("enabled schedule")
    assert stored(db)[0]["enabled"] is True and stored(db)[0]["next_run_at"] is not None

    deleted = shell("pgjobs schedule delete daily-backup", db_url, tmp_path)
    assert deleted.returncode == 0 and deleted.stdout == "deleted schedule 'daily-backup'\n"
    assert stored(db) == []


def test_json_output_and_update(db_url: str, db: Any, tmp_path: Path) -> None:
    created = schedule_cli(
        db_url, tmp_path, "create", "--name", "berlin", "--type", "custom", "--cron",
        "*/15 9-17 * * 1-5", "--tz", "Europe/Berlin", "--misfire", "run_once",
        "--priority", "high", "--attempts", "4", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    assert body["name"] == "berlin" and body["timezone"] == "Europe/Berlin"
    assert body["misfire_policy"] == "run_once" and body["priority"] == 5
    assert body["options"] == {"attempts": 4}

    listed = json.loads(schedule_cli(db_url, tmp_path, "list", "--json").stdout)
    assert [s["name"] for s in listed] == ["berlin"]
    shown = json.loads(schedule_cli(db_url, tmp_path, "show", "berlin", "--json").stdout)
    assert len(shown["upcoming"]) == 5 and shown["upcoming"][0] == shown["next_run_at"]

    updated = schedule_cli(
        db_url, tmp_path, "update", "berlin", "--cron", "0 12 * * *", "--payload", '{"v": 2}'
    )
    assert updated.returncode == 0, updated.stderr
    assert updated.stdout.startswith("updated schedule 'berlin'; next run ")
    assert " 12:00:00+01:00" in updated.stdout or " 12:00:00+02:00" in updated.stdout
    [row] = stored(db)
    assert row["cron_expression"] == "0 12 * * *" and row["payload"] == {"v": 2}

    replaced = schedule_cli(
        db_url, tmp_path, "create", "--name", "berlin", "--type", "custom", "--cron", "@hourly",
        "--replace",
    )  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr
    assert stored(db)[0]["cron_expression"] == "@hourly"
    assert schedule_cli(db_url, tmp_path, "list").stdout.count("\n") == 3
    assert schedule_cli(db_url, tmp_path, "disable", "berlin").returncode == 0
    assert schedule_cli(db_url, tmp_path, "delete", "berlin").returncode == 0

    # Every change is in the audit trail, as the API's and the dashboard's are.
    every_field = sorted(schedule_fields("n", "t", "@hourly"))
    assert audit_rows(db) == [
        {"actor": CLI_ACTOR, "action": "schedule.create", "target": "berlin", "detail": {}},
        {
            "actor": CLI_ACTOR,
            "action": "schedule.update",
            "target": "berlin",
            "detail": {"fields": ["cron", "payload"]},
        },
        {
            "actor": CLI_ACTOR,
            "action": "schedule.update",
            "target": "berlin",
            "detail": {"fields": every_field},
        },
        {
            "actor": CLI_ACTOR,
            "action": "schedule.update",
            "target": "berlin",
            "detail": {"fields": ["enabled"]},
        },
        {"actor": CLI_ACTOR, "action": "schedule.delete", "target": "berlin", "detail": {}},
    ]


# The command as a plugin user writes it: a database by its name on the DATABASE_URL
# server, an S3 destination, the fields as arguments in order.
WEEKLY_BACKUP = """pgjobs schedule create weekly-backup database-backup "0 3 * * 0" \
'{"database": "production", "destination": "s3://backups/weekly"}'"""


def test_create_with_arguments_in_order(db_url: str, tmp_path: Path) -> None:
    created = shell(WEEKLY_BACKUP, db_url, tmp_path)
    assert created.returncode == 0, created.stderr
    stored = schedule_cli(db_url, tmp_path, "show", "weekly-backup", "--json")
    shown = json.loads(stored.stdout)
    assert (shown["type"], shown["cron_expression"]) == ("database-backup", "0 3 * * 0")
    payload = {"database": "production", "destination": "s3://backups/weekly"}
    assert shown["payload"] == payload
    # What each fire enqueues passes the type's checks (the fire itself is run against a
    # real S3 server in test_backup_s3.py).
    enqueued = shell(
        f"pgjobs enqueue database-backup --payload '{json.dumps(payload)}'", db_url, tmp_path
    )
    assert enqueued.returncode == 0, enqueued.stderr


def test_empty_list(db_url: str, tmp_path: Path) -> None:
    listed = schedule_cli(db_url, tmp_path, "list")
    assert listed.returncode == 0
    assert listed.stdout.startswith("no schedules")
    assert json.loads(schedule_cli(db_url, tmp_path, "list", "--json").stdout) == []


BASE = ["create", "--name", "s", "--type", "custom"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [*BASE, "--cron", "61 * * * *"],
            "error: invalid cron expression '61 * * * *': minute field '61' is not valid",
        ),
        (
            [*BASE, "--cron", "0 2 * *"],
            "error: invalid cron expression '0 2 * *': expected 5 fields",
        ),
        (
            [*BASE, "--cron", "* * * * *", "--payload", "{bad json"],
            "error: --payload is not valid JSON",
        ),
        (
            [*BASE, "--cron", "* * * * *", "--payload", "[1, 2]"],
            "error: payload must be a JSON object",
        ),
        (
            [*BASE, "--cron", "* * * * *", "--tz", "Europe/Berln"],
            "error: unknown timezone 'Europe/Berln'",
        ),
        (
            [*BASE, "--cron", "* * * * *", "--misfire", "later"],
            "error: unknown misfire policy 'later'",
        ),
        (["show", "nope"], "error: no schedule named 'nope'"),
        (["enable", "nope"], "error: no schedule named 'nope'"),
        (["disable", "nope"], "error: no schedule named 'nope'"),
        (["delete", "nope"], "error: no schedule named 'nope'"),
        (["update", "nope", "--cron", "* * * * *"], "error: no schedule named 'nope'"),
        (["update", "keep", "--cron", "* * * 13 *"], "error: invalid cron expression"),
        (["update", "keep", "--tz", "Nowhere"], "error: unknown timezone 'Nowhere'"),
        (
            ["create", "--name", "keep", "--type", "custom", "--cron", "* * * * *"],
            "error: a schedule named 'keep' already exists",
        ),
        (["create", "s", "custom"], "error: missing CRON (or --cron)"),
        (["create", "--type", "custom", "--cron", "* * * * *"], "error: missing NAME (or --name)"),
        (
            ["create", "s", "custom", "* * * * *", "{}", "extra"],
            "error: schedule create takes at most NAME TYPE CRON PAYLOAD",
        ),
        (
            ["create", "s", "--name", "t", "--type", "custom", "--cron", "* * * * *"],
            "error: --name given twice: as an argument and as an option",
        ),
        (["create", "s", "custom", "* * * * *", "{bad"], "error: PAYLOAD is not valid JSON"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    db_url: str, db: Any, tmp_path: Path, args: list[str], message: str
) -> None:
    app = App(make_settings(db_url))
    try:
        app.schedule_sync("keep", "custom", "0 * * * *")
    finally:
        app.close_sync()
    before = snapshot(db)
    result = schedule_cli(db_url, tmp_path, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(message), result.stderr
    assert snapshot(db) == before  # no change, no audit row


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = schedule_cli("postgresql://postgres@127.0.0.1:1/nope", tmp_path, "list")
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot connect to PostgreSQL at 127.0.0.1:1")
    assert result.stderr.count("\n") == 1
