"""`pgjobs worker` and `pgjobs server` writing their log to a file: the job outcome
lines, JSON lines with the job's fields, size-based rotation (also with several worker
processes sharing one file), reopening after logrotate moved the file, and one-line
refusals of a log path that cannot be written. Real processes, real files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.helpers import wait_until
from tests.paths import APPS
from tests.pgjobs_cli import clean_env, one_line_error_problem, run_pgjobs
from tests.webserver import free_port

FAST = {"JOBS_POLL_INTERVAL": "200", "JOBS_HEARTBEAT_INTERVAL": "300"}


class Running:
    """A `pgjobs` command running in `cwd`, its stdout and stderr kept in files."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.stdout = cwd / "stdout.txt"
        self.stderr = cwd / "stderr.txt"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pgjobs", *args],
                cwd=cwd,
                env=clean_env(**env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def started() -> Iterator[list[Running]]:
    running: list[Running] = []
    yield running
    for item in running:
        if item.proc.poll() is None:
            item.proc.kill()
            item.proc.wait(10)


def start_worker(
    started: list[Running], tmp_path: Path, db_url: str, *args: str, **env: str
) -> Running:
    environ = {"DATABASE_URL": db_url, "PYTHONPATH": APPS, "LOG_LEVEL": "info", **FAST, **env}
    worker = Running(["worker", "--app", "worker_app:app", *args], tmp_path, environ)
    started.append(worker)
    return worker


def enqueue(db: Any, job_type: str, count: int = 1, attempts: int = 3) -> list[str]:
    rows = db.execute(
        "INSERT INTO jobs (type, payload, max_attempts) "
        "SELECT %s, '{}'::jsonb, %s FROM generate_series(1, %s) RETURNING id",
        (job_type, attempts, count),
    ).fetchall()
    return [str(row["id"]) for row in rows]


def finished(db: Any, ids: list[str]) -> bool:
    row = db.execute(
        "SELECT count(*) AS n FROM jobs WHERE id = ANY(%s::uuid[]) "
        "AND status IN ('completed', 'failed')",
        (ids,),
    ).fetchone()
    return bool(row["n"] == len(ids))


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def json_lines(*paths: Path) -> list[dict[str, Any]]:
    """Every line of the files, each parsed (a line that is not one object fails)."""
    entries = []
    for path in paths:
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            entries.append(entry)
    return entries


def test_worker_writes_job_outcomes_to_the_log_file_and_keeps_stderr_quiet(
    db: Any, db_url: str, tmp_path: Path, started: list[Running]
) -> None:
    [job_id] = enqueue(db, "noop")
    # `~` is expanded (no shell here to do it) and the missing directories are created.
    log = tmp_path / "home" / ".nself" / "logs" / "plugins" / "jobs" / "worker.log"
    worker = start_worker(
        started,
        tmp_path,
        db_url,
        "--log-file",
        "~/.nself/logs/plugins/jobs/worker.log",
        HOME=str(tmp_path / "home"),
    )
    wait_until(
        lambda: f"job completed id={job_id} type=noop queue=default" in read(log),
        timeout=30,
        message="the job's outcome line in the log file",
    )
    assert worker.stop() == 0
    text = log.read_text()
    assert " INFO pgjobs.worker worker " in text and " started queues=default" in text
    assert " stopped after 1 jobs" in text
    # The terminal or journal gets where the log is, and nothing else.
    assert worker.output().splitlines() == [f"logging to {log}"]


def test_json_lines_carry_the_job_fields(
    db: Any, db_url: str, tmp_path: Path, started: list[Running]
) -> None:
    [done] = enqueue(db, "noop")
    [failed] = enqueue(db, "no-such-handler", attempts=1)
    log = tmp_path / "worker.log"
    worker = start_worker(started, tmp_path, db_url, "--log-format", "json", JOBS_LOG_FILE=str(log))
    wait_until(lambda: finished(db, [done, failed]), timeout=30, message="both jobs ended")
    assert worker.stop() == 0
    entries = json_lines(log)
    by_job = {e["job_id"]: e for e in entries if "job_id" in e}
    completed = by_job[done]
    assert completed["level"] == "info" and completed["logger"] == "pgjobs.worker"
    assert completed["message"].startswith(f"job completed id={done} type=noop")
    assert completed["type"] == "noop" and completed["queue"] == "default"
    assert completed["attempt"] == 1 and completed["outcome"] == "completed"
    assert isinstance(completed["duration_ms"], int) and completed["duration_ms"] >= 0
    assert completed["pid"] == worker.proc.pid
    stamp = datetime.fromisoformat(completed["time"].replace("Z", "+00:00"))
    assert completed["time"].endswith("Z") and stamp.utcoffset() is not None
    gave_up = by_job[failed]
    assert gave_up["level"] == "warning" and gave_up["outcome"] == "failed"
    assert gave_up["type"] == "no-such-handler" and gave_up["attempt"] == 1
    assert "no handler registered" in gave_up["message"]
    # Records about no job have no job fields.
    assert all(
        set(e) == {"time", "level", "logger", "message", "pid"}
        for e in entries
        if "job_id" not in e
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_log_file_rotates_by_size_without_losing_a_record(
    db: Any, db_url: str, tmp_path: Path, started: list[Running], processes: int
) -> None:
    log = tmp_path / "logs" / "worker.log"
    limit = 2000
    worker = start_worker(
        started,
        tmp_path,
        db_url,
        "--log-file",
        str(log),
        "--log-format",
        "json",
        "--processes",
        str(processes),
        "--concurrency",
        "2",
        JOBS_LOG_MAX_BYTES=str(limit),
        JOBS_LOG_BACKUPS="50",
    )
    # Every process is claiming before the jobs come, so they all write while rotating.
    wait_until(
        lambda: read(log).count(" started queues=") == processes,
        timeout=30,
        message=f"{processes} worker processes started",
    )
    ids = enqueue(db, "noop", 60)
    wait_until(lambda: finished(db, ids), timeout=60, message="60 jobs completed")
    assert worker.stop() == 0
    files = sorted(log.parent.iterdir())
    assert log.with_name("worker.log.1") in files and log.with_name("worker.log.2") in files
    assert {f.name for f in files} == {"worker.log"} | {
        f"worker.log.{n}" for n in range(1, len(files))
    }
    longest = max(len(line) + 1 for f in files for line in f.read_text().splitlines())
    for f in files:
        assert f.stat().st_size <= limit + longest, (f.name, f.stat().st_size)
    # A file is rotated only once full: two processes rotating one file each on their
    # own would also rotate the other's fresh, nearly empty file away.
    sizes = {f.name: f.stat().st_size for f in files if f != log}
    assert all(size >= limit - longest for size in sizes.values()), sizes
    # Every line is whole (no two records interleaved) and every outcome is there once.
    entries = json_lines(*files)
    outcomes = sorted(e["job_id"] for e in entries if e.get("outcome") == "completed")
    assert outcomes == sorted(ids)
    started_by = {e["pid"] for e in entries if " started queues=" in e["message"]}
    assert len(started_by) == processes


def test_without_rotation_the_file_is_reopened_after_logrotate_moves_it(
    db: Any, db_url: str, tmp_path: Path, started: list[Running]
) -> None:
    log = tmp_path / "worker.log"
    worker = start_worker(started, tmp_path, db_url, "--log-file", str(log), JOBS_LOG_MAX_BYTES="0")
    [first] = enqueue(db, "noop")
    wait_until(lambda: f"id={first} " in read(log), timeout=30, message="first job logged")
    moved = log.rename(tmp_path / "worker.log.1")  # what logrotate does (without copytruncate)
    [second] = enqueue(db, "noop")
    wait_until(lambda: f"id={second} " in read(log), timeout=30, message="a new worker.log")
    assert worker.stop() == 0
    assert f"id={second} " not in moved.read_text()
    assert " stopped after 2 jobs" in log.read_text()


def test_a_log_path_that_cannot_be_written_stops_before_starting(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    # Nothing listens on port 1: a refusal must come before any connection attempt.
    env = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none", "PYTHONPATH": APPS}
    cases = [
        (
            ["worker", "--log-file", str(tmp_path / "plain-file" / "worker.log")],
            f"error: cannot write the log file {tmp_path}/plain-file/worker.log: "
            f"Not a directory ({tmp_path}/plain-file)",
        ),
        (
            ["server", "--log-file", str(tmp_path)],
            f"error: cannot write the log file {tmp_path}: Is a directory",
        ),
        (
            ["worker", "--log-format", "xml"],
            "error: Invalid value for '--log-format': 'xml' is not one of 'text', 'json'.",
        ),
    ]
    for args, line in cases:
        result = run_pgjobs(args, tmp_path, env)
        assert one_line_error_problem(result) is None, (args, result.stderr)
        assert result.stderr.strip() == line
    result = run_pgjobs(["worker"], tmp_path, {**env, "JOBS_LOG_FORMAT": "yaml"})
    assert result.stderr.strip() == "error: JOBS_LOG_FORMAT must be text or json (got 'yaml')"
    assert result.returncode == 2
    assert not (tmp_path / "plain-file").read_text()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_server_writes_its_startup_and_access_lines_to_the_log_file(
    db_url: str, tmp_path: Path, started: list[Running], fmt: str
) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    server = Running(
        ["server", "--port", str(port), "--log-file", str(log), "--log-format", fmt],
        tmp_path,
        {"DATABASE_URL": db_url, "LOG_LEVEL": "debug"},  # requests are logged at debug
    )
    started.append(server)

    def health() -> bool:
        assert server.proc.poll() is None, server.output()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(health, timeout=30, message="the server answering /health")

    def logged() -> str:
        if fmt == "json":
            return "\n".join(e["message"] for e in json_lines(log))
        return read(log)

    wait_until(lambda: '"GET /health HTTP/1.1" 200' in logged(), timeout=10, message="access")
    # uvicorn ends by raising the signal it caught again, once it has shut down.
    assert server.stop() in (0, -signal.SIGTERM)
    text = logged()
    assert f"pgjobs server on http://127.0.0.1:{port}, dashboard at /dashboard" in text
    assert "Application startup complete." in text
    assert "Finished server process" in text
    # Stderr: where the log is and the address; uvicorn's lines went to the file only.
    assert server.output().splitlines() == [
        f"logging to {log}",
        f"pgjobs server on http://127.0.0.1:{port}, dashboard at /dashboard",
    ]


def test_worker_waits_for_the_schema_and_says_so_once(
    empty_db_url: str, tmp_path: Path, started: list[Running]
) -> None:
    # Trust authentication ignores the password; it must not reach the log.
    url = empty_db_url.replace("postgres@", "postgres:s3cret@", 1)
    assert "s3cret" in url
    worker = start_worker(started, tmp_path, url, LOG_LEVEL="debug")
    wait_until(
        lambda: worker.output().count("still no pgjobs schema") >= 2,
        timeout=30,
        message="the worker retrying quietly",
    )
    assert worker.proc.poll() is None
    init = run_pgjobs(["init"], tmp_path, {"DATABASE_URL": empty_db_url})
    assert init.returncode == 0, init.stderr
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        [[job_id]] = conn.execute(
            "INSERT INTO jobs (type, payload) VALUES ('noop', '{}') RETURNING id"
        ).fetchall()
        wait_until(
            lambda: (
                conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
                == ("completed",)
            ),
            timeout=30,
            message="the job created after `pgjobs init` completed",
        )
    assert worker.stop() == 0
    output = worker.output()
    said = [line for line in output.splitlines() if "has no pgjobs schema" in line]
    masked = url.replace("s3cret", "***")
    assert len(said) == 1, output[-2000:]
    assert " ERROR pgjobs.worker the database at " + masked + " has no pgjobs schema (" in said[0]
    assert said[0].endswith("): run `pgjobs init`; waiting for it")
    assert "s3cret" not in output
    assert "cannot register worker" not in output and "WARNING" not in output
    assert "the pgjobs schema is installed now: starting" in output


def test_supervised_worker_processes_reach_stderr_through_the_supervisor(
    db: Any, db_url: str, tmp_path: Path, started: list[Running]
) -> None:
    """Without a log file the children's records still arrive, via the supervisor."""
    worker = start_worker(started, tmp_path, db_url, "--processes", "2")
    wait_until(
        lambda: worker.output().count(" started queues=default") == 2,
        timeout=30,
        message="both processes started",
    )
    [job_id] = enqueue(db, "noop")
    wait_until(
        lambda: f"job completed id={job_id} " in worker.output(),
        timeout=30,
        message="the outcome on stderr",
    )
    assert worker.stop() == 0
    assert worker.output().count(" stopped after ") == 2
    assert {p.name for p in tmp_path.iterdir()} == {"stdout.txt", "stderr.txt"}
