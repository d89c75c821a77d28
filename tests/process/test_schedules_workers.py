"""Schedules fired by real workers: in-process, and ten worker processes with
maintenance on while two of them are killed (SIGKILL) and restarted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import pgjobs
from pgjobs.app import App
from tests.conftest import make_settings
from tests.helpers import wait_until, wait_until_async
from tests.paths import APPS

GRACE = timedelta(seconds=10)  # JOBS_CRON_MISFIRE_GRACE default


@pytest.mark.anyio
async def test_an_in_process_worker_fires_and_runs_a_per_second_schedule(app: App, db: Any) -> None:
    ran: list[str] = []

    async def three_ran() -> bool:
        return len(ran) >= 3

    @app.handler("beat")
    async def beat(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        ran.append(ctx.id.hex)

    await app.schedule("beat", "beat", "* * * * * *")
    async with app.worker(["default"], concurrency=2):
        await wait_until_async(three_ran, timeout=15, message="three runs")
    rows = db.execute(
        "SELECT scheduled_for, status FROM jobs WHERE schedule_id IS NOT NULL "
        "AND status = 'completed' ORDER BY scheduled_for"
    ).fetchall()
    instants = [row["scheduled_for"] for row in rows]
    assert len(instants) >= 3 and len(set(instants)) == len(instants)
    assert all(at.microsecond == 0 for at in instants)


# ---------------------------------------------------------------- ten processes


WORKERS = 10
RUN_SECONDS = 60
KILLS_AT = (15.0, 35.0)  # seconds after the schedule is created
DOWN_FOR = 5.0


class Fleet:
    """`python -m pgjobs worker` processes with maintenance on and short intervals."""

    def __init__(self, db_url: str, logs: Path) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "PYTHONPATH": APPS,
            "LOG_LEVEL": "warning",
            "JOBS_POLL_INTERVAL": "500",
            "JOBS_HEARTBEAT_INTERVAL": "500",
            "JOBS_LOCK_DURATION": "3000",
            "JOBS_STALLED_INTERVAL": "1000",
        }
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with (self.logs / f"worker-{len(self.procs)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pgjobs", "worker", "--app", "worker_app:app", "-c", "2"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def fleet(db_url: str, tmp_path: Path) -> Iterator[Fleet]:
    group = Fleet(db_url, tmp_path)
    try:
        yield group
    finally:
        group.stop()


def db_now(db: Any) -> datetime:
    return db.execute("SELECT pgjobs_now() AS now").fetchone()["now"]


def latest_cron_leader(
    db: Any, candidates: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """The live worker process that most recently ran a cron round (its connection's
    last statement touched job_schedule_fires), or any live one."""
    rows = db.execute(
        "SELECT w.pid FROM pg_stat_activity a JOIN job_workers w "
        "ON a.application_name = 'pgjobs:claim:' || right(replace(w.id::text, '-', ''), 12) "
        "WHERE a.query LIKE '%%job_schedule_fires%%' ORDER BY a.query_start DESC"
    ).fetchall()
    live = {proc.pid: proc for proc in candidates if proc.poll() is None}
    for row in rows:
        if row["pid"] in live:
            return live[row["pid"]]
    return random.choice(list(live.values()))


@pytest.mark.slow
def test_ten_workers_fire_each_instant_exactly_once_while_two_are_killed(
    db_url: str, db: Any, fleet: Fleet
) -> None:
    originals = [fleet.start() for _ in range(WORKERS)]
    wait_until(
        lambda: db.execute("SELECT count(*) AS n FROM job_workers").fetchone()["n"] >= WORKERS,
        timeout=60,
        interval=0.2,
        message="ten workers registered",
    )
    app = App(make_settings(db_url))
    try:
        created = app.schedule_sync("every-second", "noop", "* * * * * *")
        start = time.monotonic()
        kill_windows: list[tuple[datetime, datetime]] = []
        for kill_at in KILLS_AT:
            time.sleep(max(0.0, start + kill_at - time.monotonic()))
            # Killing the process that leads cron the most exercises the failover.
            victim = latest_cron_leader(db, originals)
            killed_at = db_now(db)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            time.sleep(DOWN_FOR)
            fleet.start()
            kill_windows.append((killed_at - timedelta(seconds=1), killed_at + GRACE))
        time.sleep(max(0.0, start + RUN_SECONDS - time.monotonic()))
        stopped = app.disable_schedule_sync("every-second").updated_at
    finally:
        app.close_sync()

    assert created.next_run_at is not None
    rows = db.execute(
        "SELECT id, scheduled_for FROM jobs WHERE schedule_id = %s", (created.id,)
    ).fetchall()
    per_instant = Counter(row["scheduled_for"] for row in rows)
    duplicates = {at: n for at, n in per_instant.items() if n > 1}
    assert duplicates == {}, f"fires enqueued more than once: {duplicates}"
    assert all(at.microsecond == 0 for at in per_instant)

    # Every second from the first slot until just before the schedule was disabled
    # (the last slots may not have been due yet) fired, except possibly inside a kill
    # window: the skip policy drops a slot only if no leader ran within the grace period.
    expected: list[datetime] = []
    at = created.next_run_at
    while at <= stopped - timedelta(seconds=2):
        expected.append(at)
        at += timedelta(seconds=1)
    gaps = [at for at in expected if at not in per_instant]
    outside = [at for at in gaps if not any(lo <= at <= hi for lo, hi in kill_windows)]
    assert outside == [], f"slots never fired outside the kill windows: {outside}"
    assert len(per_instant) >= 55, f"only {len(per_instant)} fires"
    assert max(per_instant) <= stopped

    # Each fired job ran and its result was recorded once, killed workers notwithstanding.
    wait_until(
        lambda: (
            db.execute(
                "SELECT count(*) AS n FROM jobs WHERE schedule_id = %s AND status <> 'completed'",
                (created.id,),
            ).fetchone()["n"]
            == 0
        ),
        timeout=30,
        interval=0.2,
        message="every fired job completed",
    )
    results = db.execute(
        "SELECT r.job_id, count(*) AS n FROM job_results r JOIN jobs j ON j.id = r.job_id "
        "WHERE j.schedule_id = %s GROUP BY r.job_id",
        (created.id,),
    ).fetchall()
    assert len(results) == len(rows) and all(r["n"] == 1 for r in results)
    print(
        f"\n{len(per_instant)} fires, {len(duplicates)} duplicates, {len(gaps)} gaps "
        f"({len(outside)} outside the kill windows), {len(expected)} expected slots"
    )
