"""Every line of the spec's "CLI Commands" section (with `pgjobs` for `nself plugin jobs`)
run as written through bash, plus the operator commands' output and error lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.helpers import wait_until
from tests.opsdata import insert_job, snapshot, status_of
from tests.webserver import Process, clean_env, ctrl_c_as_in_a_terminal, free_port, run_cli

Conn = psycopg.Connection[Any]
BIN = str(Path(sys.executable).parent)


def sh(line: str, db_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run one command line exactly as a user types it."""
    full_env = clean_env(DATABASE_URL=db_url, PATH=f"{BIN}:{os.environ['PATH']}", **env)
    return subprocess.run(
        ["bash", "-c", line], env=full_env, capture_output=True, text=True, timeout=60, check=False
    )


def ok(line: str, db_url: str, **env: str) -> str:
    result = sh(line, db_url, **env)
    assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def one_error_line(result: subprocess.CompletedProcess[str], contains: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert contains in lines[0], lines[0]
    assert result.stdout == ""


def test_spec_plugin_management_lines(db_url: str, db: Conn) -> None:
    insert_job(db, status="pending")
    insert_job(db, status="completed", duration_ms=120)
    insert_job(db, status="failed", queue="emails")
    assert "schema" in ok("pgjobs init", db_url)
    out = ok("pgjobs stats", db_url)
    assert out.splitlines()[0].split()[:3] == ["queue", "waiting", "active"]
    assert any(line.startswith("emails") for line in out.splitlines())
    out = ok("pgjobs stats --queue default", db_url)
    assert next(line.split()[0] for line in out.splitlines()[2:] if line.strip()) == "default"
    assert "emails" not in out
    assert "done/48h" in ok("pgjobs stats --time 48", db_url)
    perf = ok("pgjobs stats --performance", db_url)
    assert "p95" in perf and "120ms" in perf
    data = json.loads(ok("pgjobs stats --json", db_url))
    assert {q["name"] for q in data["queues"]} >= {"default", "emails"}


def test_spec_stats_watch_refreshes_until_ctrl_c(db_url: str) -> None:
    watch = Process(["stats", "--watch", "--interval", "0.2"], {"DATABASE_URL": db_url})
    try:
        wait_until(lambda: watch.output().count("refreshed") >= 2, timeout=30)
        assert "\x1b[H\x1b[2J" in watch.output()  # redrawn in place, not scrolled
    finally:
        code = watch.stop()
    assert code == 0


def test_spec_watch_line_as_written(db_url: str) -> None:
    env = clean_env(DATABASE_URL=db_url, PATH=f"{BIN}:{os.environ['PATH']}")
    with subprocess.Popen(
        ["bash", "-c", "pgjobs stats --watch"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    ) as proc:
        assert proc.stdout is not None
        try:
            first = proc.stdout.readline() + proc.stdout.readline()
            assert "queue" in first
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_spec_server_and_worker_lines(db_url: str, db: Conn) -> None:
    port = free_port()
    server = Process(["server"], {"DATABASE_URL": db_url, "JOBS_DASHBOARD_PORT": str(port)})
    try:
        wait_until(lambda: _health(port), timeout=30, message="pgjobs server")
    finally:
        assert server.stop() == 0, server.output()
    for line, queues, concurrency in (
        ("pgjobs worker", ["default"], 5),
        ("pgjobs worker high-priority", ["high-priority"], 5),
        ("JOBS_DEFAULT_CONCURRENCY=10 pgjobs worker", ["default"], 10),
        ("LOG_LEVEL=debug pgjobs worker", ["default"], 5),
    ):
        db.execute("DELETE FROM job_workers")
        env = clean_env(DATABASE_URL=db_url, PATH=f"{BIN}:{os.environ['PATH']}")
        with subprocess.Popen(
            ["bash", "-c", line],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=ctrl_c_as_in_a_terminal,
        ) as proc:
            try:
                row = wait_until(
                    lambda: db.execute(
                        "SELECT queues, concurrency FROM job_workers WHERE NOT stopping"
                    ).fetchone(),
                    timeout=30,
                    message=f"{line} to register",
                )
                assert row == {"queues": queues, "concurrency": concurrency}, line
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(30)
        assert proc.returncode == 0, line


def _health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_spec_retry_management_lines(db_url: str, db: Conn) -> None:
    one = insert_job(db, status="failed", type="resize", queue="images")
    emails = [insert_job(db, status="failed", type="send-email") for _ in range(3)]
    others = [insert_job(db, status="failed", type="resize") for _ in range(25)]  # newest
    before = snapshot(db)
    shown = ok("pgjobs retry --show", db_url)
    assert "nothing was changed" in shown and len(shown.splitlines()) == 2 + 10 + 2
    assert snapshot(db) == before
    assert db.execute("SELECT count(*) AS n FROM job_audit").fetchone() == {"n": 0}
    assert "retried 10 job(s)" in ok("pgjobs retry", db_url)
    assert "retried 3 job(s)" in ok("pgjobs retry --type send-email", db_url)
    assert all(status_of(db, i) == "pending" for i in emails)
    assert "retried 15 job(s)" in ok("pgjobs retry --queue default --limit 20", db_url)
    assert all(status_of(db, i) == "pending" for i in others)
    out = ok(f"pgjobs retry --id {one}", db_url)
    assert str(one) in out and status_of(db, one) == "pending"
    assert "no failed jobs" in ok("pgjobs retry --limit 50", db_url)


def test_spec_schedule_lines(db_url: str) -> None:
    if sh("pgjobs schedule --help", db_url).returncode != 0:
        pytest.skip("the schedule commands are not installed")
    ok(
        "pgjobs schedule create \\\n  --name daily-backup \\\n  --type database-backup \\\n"
        '  --cron "0 2 * * *" \\\n'
        '  --payload \'{"database": "production", "destination": "/backups"}\' \\\n'
        '  --desc "Daily production database backup"',
        db_url,
    )
    assert "daily-backup" in ok("pgjobs schedule list", db_url)
    assert "0 2 * * *" in ok("pgjobs schedule show daily-backup", db_url)
    ok("pgjobs schedule disable daily-backup", db_url)
    ok("pgjobs schedule enable daily-backup", db_url)
    ok("pgjobs schedule delete daily-backup", db_url)


def test_clean_beside_the_specs_audit_table_deletes_the_rest_and_exits_2(
    db_url: str, db: Conn
) -> None:
    from datetime import timedelta

    from tests.db.test_schema import SPEC_AUDIT

    free = [insert_job(db, status="completed", finished_ago=timedelta(days=2)) for _ in range(4)]
    db.execute(SPEC_AUDIT)
    audited = [insert_job(db, status="completed", finished_ago=timedelta(days=2)) for _ in range(3)]
    result = sh("pgjobs clean --completed-older-than 1d", db_url)
    assert result.returncode == 2, result.stderr
    assert result.stdout.splitlines() == ["deleted 4 job(s): 4 completed (older than 1d00h)"]
    assert result.stderr.splitlines() == [
        "error: skipped 3 job(s): table job_audit_log still references them through foreign "
        "key job_audit_log_job_id_fkey; make it ON DELETE CASCADE or ON DELETE SET NULL to "
        "let them go (docs/operations.md)"
    ]
    assert all(status_of(db, i) is None for i in free)
    assert all(status_of(db, i) == "completed" for i in audited)


def test_clean_pause_resume_cancel_queues_workers_jobs(db_url: str, db: Conn) -> None:
    from datetime import timedelta

    old = [insert_job(db, status="completed", finished_ago=timedelta(days=2)) for _ in range(3)]
    insert_job(db, status="failed", finished_ago=timedelta(days=40))
    pending = insert_job(db, status="pending")
    before = snapshot(db)
    dry = ok("pgjobs clean --completed-older-than 1d --failed-older-than 30d --dry-run", db_url)
    assert dry.strip().startswith("would delete 4 job(s)")
    assert snapshot(db) == before
    report = json.loads(ok("pgjobs clean --completed-older-than 24h --json", db_url))
    assert (report["completed"], report["failed"], report["dry_run"]) == (3, 0, False)
    assert all(status_of(db, i) is None for i in old)
    assert ok("pgjobs pause default", db_url).strip() == "paused default"
    queues = ok("pgjobs queues", db_url).splitlines()
    assert queues[0].split()[:3] == ["queue", "state", "waiting"]
    assert next(line for line in queues if line.startswith("default")).split()[1] == "paused"
    assert ok("pgjobs resume default", db_url).strip() == "resumed default"
    assert ok(f"pgjobs cancel {pending}", db_url).strip() == f"cancelled {pending}"
    assert status_of(db, pending) == "cancelled"
    listed = json.loads(ok("pgjobs jobs --status cancelled --json", db_url))
    assert [j["id"] for j in listed["jobs"]] == [str(pending)]
    assert "no workers" in ok("pgjobs workers", db_url)
    actors = {r["actor"] for r in db.execute("SELECT actor FROM job_audit")}
    assert all(a.startswith("cli") for a in actors) and actors


def test_cli_errors_are_one_line_and_exit_2(db_url: str, db: Conn) -> None:
    env = {"DATABASE_URL": db_url}
    running = insert_job(db, status="active")
    before = snapshot(db)
    one_error_line(run_cli(["pause", "ghost"], env), "no queue named 'ghost'")
    one_error_line(run_cli(["pause", "Bad Queue"], env), "invalid queue name")
    one_error_line(run_cli(["stats", "--time", "abc"], env), "hours must be a number")
    one_error_line(run_cli(["stats", "--queue", "ghost"], env), "no queue named")
    one_error_line(run_cli(["clean", "--completed-older-than", "7x"], env), "7d")
    one_error_line(run_cli(["retry", "--id", "nope"], env), "expected a UUID")
    one_error_line(run_cli(["retry", "--limit", "0"], env), "--limit")
    missing = "00000000-0000-7000-8000-000000000000"
    one_error_line(run_cli(["cancel", missing], env), "no job with id")
    one_error_line(run_cli(["delete", str(running)], env), "cancel it before deleting")
    one_error_line(run_cli(["jobs", "--status", "nope"], env), "unknown status")
    assert snapshot(db) == before
    dead = {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"}
    one_error_line(run_cli(["stats"], dead), "cannot connect to PostgreSQL")
    time.sleep(0)  # nothing to wait for: every command above has exited
