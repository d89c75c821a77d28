"""Workers as real processes: crashes and lease rescue, graceful shutdown on SIGTERM,
losing database connections, and the multi-process supervisor."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.helpers import wait_until
from tests.paths import APPS

FAST_LEASES = {
    "JOBS_LOCK_DURATION": "1500",
    "JOBS_STALLED_INTERVAL": "300",
    "JOBS_HEARTBEAT_INTERVAL": "300",
    "JOBS_POLL_INTERVAL": "200",
}

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn(db_url: str) -> Iterator[Spawn]:
    """Start `pgjobs worker --app worker_app:app ...` processes; kill leftovers after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, own_group: bool = False, **env: str) -> subprocess.Popen[bytes]:
        """`own_group`: in a process group of its own, as a terminal's foreground job."""
        environ = {
            **os.environ,
            "DATABASE_URL": db_url,
            "PYTHONPATH": APPS,
            "LOG_LEVEL": "info",
            **FAST_LEASES,
            **env,
        }
        command = [sys.executable, "-m", "pgjobs", "worker", "--app", "worker_app:app", *args]
        proc = subprocess.Popen(
            command,
            env=environ,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE if own_group else None,
            start_new_session=own_group,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def query(db: Any, sql: str, *params: Any) -> list[dict[str, Any]]:
    return db.execute(sql, params).fetchall()


def enqueue(db: Any, type: str, count: int, payload: str = "{}", **cols: Any) -> list[Any]:
    rows = query(
        db,
        "INSERT INTO jobs (type, payload) SELECT %s, %s::jsonb FROM generate_series(1, %s) "
        "RETURNING id",
        type,
        payload,
        count,
    )
    return [r["id"] for r in rows]


def statuses(db: Any, ids: list[Any]) -> dict[str, int]:
    rows = query(
        db, "SELECT status, count(*) AS n FROM jobs WHERE id = ANY(%s) GROUP BY status", ids
    )
    return {r["status"]: r["n"] for r in rows}


def all_completed(db: Any, ids: list[Any]) -> bool:
    return statuses(db, ids) == {"completed": len(ids)}


def test_killed_worker_jobs_are_rescued_and_completed_once(db: Any, spawn: Spawn) -> None:
    ids = enqueue(db, "sleep", 10, '{"ms": 1000}')
    victim = spawn("--concurrency", "10", "--no-maintenance")
    wait_until(lambda: statuses(db, ids).get("active") == 10, timeout=20, message="10 active")
    [owner] = query(db, "SELECT DISTINCT worker_id FROM jobs WHERE id = ANY(%s)", ids)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    rescuer = spawn("--concurrency", "10")
    # Any of the ten may have killed the worker: each runs alone now, one after another.
    wait_until(lambda: all_completed(db, ids), timeout=60, message="all rescued jobs completed")
    counts = query(
        db,
        "SELECT j.id, (SELECT count(*) FROM job_results r WHERE r.job_id = j.id) AS results, "
        "j.attempts, j.max_attempts, j.stalled_count, j.suspect FROM jobs j "
        "WHERE j.id = ANY(%s)",
        ids,
    )
    # Nobody is charged: none of them ran alone when the worker died. The interrupted
    # attempt is given back, and completing clears the suspicion.
    assert all(
        c["results"] == 1
        and c["attempts"] == 2
        and c["max_attempts"] == 4
        and c["stalled_count"] == 0
        and not c["suspect"]
        for c in counts
    ), counts
    stalls = query(
        db, "SELECT DISTINCT error_message, kind FROM job_failures WHERE job_id = ANY(%s)", ids
    )
    assert stalls == [
        {
            "error_message": f"interrupted: worker {owner['worker_id']} lost its lease while "
            "the job was in flight with others; not charged, it runs alone next",
            "kind": "interrupted",
        }
    ]
    # They ran one at a time.
    runs = query(
        db,
        "SELECT r.completed_at - r.duration_ms * interval '1 millisecond' AS began, "
        "r.completed_at AS ended FROM job_results r WHERE r.job_id = ANY(%s) ORDER BY 1",
        ids,
    )
    assert all(a["ended"] <= b["began"] for a, b in itertools.pairwise(runs)), runs
    # The killed run's late completion (token attempt 1) matches nothing.
    stale = query(
        db,
        "UPDATE jobs SET status = 'completed' WHERE id = %s AND status = 'active' "
        "AND attempts = 1 RETURNING id",
        ids[0],
    )
    assert stale == []
    rescuer.send_signal(signal.SIGTERM)
    assert rescuer.wait(20) == 0


def test_a_crashing_job_is_charged_and_its_neighbours_are_not(db: Any, spawn: Spawn) -> None:
    """One job whose handler kills the worker process, claimed together with others, by
    supervised workers that are restarted after every crash: the crashing job fails for
    good after its stalls, the nine others complete with no stall charged."""
    sleepers = enqueue(db, "sleep", 9, '{"ms": 200}')
    [crasher] = enqueue(db, "crash", 1)
    supervisor = spawn("--processes", "2", "--concurrency", "10", JOBS_MAX_STALLED_COUNT="1")
    wait_until(
        lambda: statuses(db, [*sleepers, crasher]) == {"completed": 9, "failed": 1},
        timeout=90,
        message="the sleepers completed and the crashing job failed",
    )
    rows = query(db, "SELECT id, stalled_count FROM jobs WHERE id = ANY(%s)", [*sleepers, crasher])
    charged = {r["id"]: r["stalled_count"] for r in rows}
    assert charged.pop(crasher) == 2
    assert set(charged.values()) == {0}
    [row] = query(db, "SELECT last_error FROM jobs WHERE id = %s", crasher)
    assert row["last_error"].startswith(
        "stalled 2 times, more than JOBS_MAX_STALLED_COUNT (1): its worker died each time it "
        "ran alone"
    ), row
    kinds = query(db, "SELECT kind FROM job_failures WHERE job_id = %s ORDER BY failed_at", crasher)
    assert [k["kind"] for k in kinds] == ["interrupted", "stalled", "stalled"]
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0


def test_sigterm_lets_running_jobs_finish(db: Any, spawn: Spawn) -> None:
    worker = spawn("--concurrency", "20")
    wait_until(lambda: query(db, "SELECT 1 FROM job_workers"), timeout=20, message="registered")
    ids = enqueue(db, "sleep", 20, '{"ms": 400}')
    wait_until(lambda: statuses(db, ids).get("active") == 20, timeout=10, message="20 active")
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert time.monotonic() - began < 30
    assert all_completed(db, ids)
    assert query(db, "SELECT count(*) AS n FROM job_workers")[0]["n"] == 0


def test_grace_period_gives_unfinished_jobs_back(db: Any, spawn: Spawn) -> None:
    worker = spawn("--concurrency", "2", "--grace", "1")
    [job] = enqueue(db, "sleep", 1, '{"ms": 10000}')
    wait_until(lambda: statuses(db, [job]).get("active") == 1, timeout=20, message="active")
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert time.monotonic() - began < 5
    [row] = query(
        db, "SELECT status, attempts, max_attempts, worker_id FROM jobs WHERE id = %s", job
    )
    # The attempt is given back by raising the limit: the run token never repeats.
    assert row == {"status": "pending", "attempts": 1, "max_attempts": 4, "worker_id": None}


def test_second_signal_exits_at_once(db: Any, spawn: Spawn) -> None:
    worker = spawn("--concurrency", "1")
    [job] = enqueue(db, "sleep", 1, '{"ms": 10000}')
    wait_until(lambda: statuses(db, [job]).get("active") == 1, timeout=20, message="active")
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # the first signal must be handled before the second is sent
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(5) != 0
    # Left active: the rescuer takes it back once the lease expires.
    assert statuses(db, [job]) == {"active": 1}


def test_worker_survives_terminated_connections(db: Any, spawn: Spawn, db_url: str) -> None:
    worker = spawn("--concurrency", "5")
    ids = enqueue(db, "sleep", 300, '{"ms": 20}')
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as admin:
        for _ in range(3):
            wait_until(
                lambda: statuses(db, ids).get("completed", 0) > 0, timeout=20, message="progress"
            )
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'pgjobs:%%'"
            ).fetchone()
            assert killed and killed["n"] >= 2
            time.sleep(0.3)
    wait_until(lambda: all_completed(db, ids), timeout=60, message="all jobs after reconnects")
    assert worker.poll() is None
    results = query(
        db,
        "SELECT count(*) AS n, count(DISTINCT job_id) AS d FROM job_results WHERE job_id = ANY(%s)",
        ids,
    )[0]
    assert results == {"n": 300, "d": 300}
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0


def test_supervisor_restarts_crashed_processes(db: Any, spawn: Spawn) -> None:
    supervisor = spawn("--processes", "2", "--concurrency", "2")
    wait_until(
        lambda: query(db, "SELECT count(*) AS n FROM job_workers")[0]["n"] == 2,
        timeout=30,
        message="two workers",
    )
    first = {r["pid"] for r in query(db, "SELECT pid FROM job_workers")}
    os.kill(next(iter(first)), signal.SIGKILL)
    wait_until(
        lambda: len({r["pid"] for r in query(db, "SELECT pid FROM job_workers")} - first) == 1,
        timeout=30,
        message="a restarted worker",
    )
    ids = enqueue(db, "noop", 20)
    wait_until(lambda: all_completed(db, ids), timeout=30, message="jobs done")
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(30) == 0


def test_ctrl_c_on_a_supervised_pool_lets_running_jobs_finish(db: Any, spawn: Spawn) -> None:
    """Ctrl-C signals every process of the terminal's group: each child gets SIGINT
    from the terminal and again from the supervisor, and must still take its grace."""
    supervisor = spawn("--processes", "2", "--concurrency", "2", "--grace", "30", own_group=True)
    wait_until(
        lambda: query(db, "SELECT count(*) AS n FROM job_workers")[0]["n"] == 2,
        timeout=30,
        message="two workers",
    )
    ids = enqueue(db, "sleep", 4, '{"ms": 2000}')
    wait_until(lambda: statuses(db, ids).get("active") == 4, timeout=20, message="all four running")
    os.killpg(supervisor.pid, signal.SIGINT)
    assert supervisor.wait(30) == 0
    assert statuses(db, ids) == {"completed": 4}
    assert supervisor.stderr is not None
    with supervisor.stderr:
        assert b"second signal" not in supervisor.stderr.read()


def test_signal_during_start_up_stops_cleanly(db: Any, spawn: Spawn) -> None:
    for _ in range(3):
        worker = spawn("--concurrency", "2")
        wait_until(lambda: query(db, "SELECT 1 FROM job_workers"), timeout=20, message="row")
        worker.send_signal(signal.SIGINT)  # start-up is still wiring its loops
        assert worker.wait(15) == 0
        assert query(db, "SELECT count(*) AS n FROM job_workers")[0]["n"] == 0


def worker_pids(db: Any) -> set[int]:
    return {r["pid"] for r in query(db, "SELECT pid FROM job_workers")}


def command_line(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [part.decode() for part in f.read().split(b"\0") if part]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_supervised_workers_are_forked_unless_the_app_started_a_thread(
    db: Any, spawn: Spawn
) -> None:
    """The supervisor forks its workers once the app is loaded; an app whose module
    started a thread gets new interpreters instead (a forked child would lack it)."""
    for app, forked in (("worker_app:app", True), ("threaded_app:app", False)):
        supervisor = spawn("--processes", "2", "--app", app)
        wait_until(lambda: len(worker_pids(db)) == 2, timeout=30, message="two workers")
        for pid in worker_pids(db):
            assert ("--log-pipe" not in command_line(pid)) is forked, app
        ids = enqueue(db, "noop", 10)
        wait_until(lambda: all_completed(db, ids), timeout=30, message="jobs done")  # noqa: B023
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0
        assert not worker_pids(db)


def test_a_supervised_pool_whose_app_cannot_be_loaded_stops_at_once(db_url: str) -> None:
    """The app is loaded once, before any worker starts: a wrong --app stops the
    command with one line rather than restarting workers that each fail to load it."""
    result = subprocess.run(
        [sys.executable, "-m", "pgjobs", "worker", "--app", "no_such_module:app", "-p", "2"],
        env={**os.environ, "DATABASE_URL": db_url, "PYTHONPATH": APPS},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "error: cannot import 'no_such_module' for --app: No module named 'no_such_module'"
    ]
