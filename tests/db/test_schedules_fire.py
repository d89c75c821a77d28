"""Schedules against PostgreSQL: definitions and edits through the App, and the cron
maintenance task firing them exactly once — driven with a FrozenClock by calling
`CronTask.run` directly, as the maintenance leader does, so nothing sleeps."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.rows import dict_row

import pgjobs
from pgjobs.app import App
from pgjobs.clock import FrozenClock
from pgjobs.errors import Conflict, NotFound, ValidationError
from pgjobs.schedules.task import CronTask
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

NOON = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def clock() -> FrozenClock:
    return FrozenClock(NOON - timedelta(seconds=10))


@pytest.fixture
async def capp(db_url: str, clock: FrozenClock) -> AsyncIterator[App]:
    """An App on the frozen clock."""
    application = App(make_settings(db_url), clock=clock)
    try:
        yield application
    finally:
        await application.close()


@pytest.fixture
async def leader(db_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(db_url, autocommit=True, row_factory=dict_row)
    try:
        yield conn
    finally:
        await conn.close()


async def tick(
    task: CronTask,
    conn: psycopg.AsyncConnection[Any],
    clock: FrozenClock,
    at: datetime | None = None,
) -> float:
    """One maintenance round, as the leader runs it: inside one transaction."""
    if at is not None:
        clock.set(at)
    async with conn.transaction():
        return await task.run(conn, clock)


def jobs(db: Any) -> list[dict[str, Any]]:
    return db.execute("SELECT * FROM jobs ORDER BY scheduled_for, created_at").fetchall()


def fire_times(db: Any) -> list[datetime]:
    return [row["scheduled_for"] for row in jobs(db)]


def schedule_row(db: Any, name: str) -> dict[str, Any]:
    return db.execute("SELECT * FROM job_schedules WHERE name = %s", (name,)).fetchone()


# ---------------------------------------------------------------- definitions


async def test_create_stores_the_definition_and_its_next_run(capp: App, db: Any) -> None:
    schedule = await capp.schedule(
        "daily-backup",
        "database-backup",
        "0 2 * * *",
        {"database": "production", "destination": "/backups"},
        description="Daily production database backup",
        timezone="Europe/Berlin",
        priority="high",
        attempts=5,
        timeout=120_000,
    )
    assert schedule.next_run_at == datetime(2024, 1, 2, 1, 0, tzinfo=UTC)  # 02:00 CET
    assert schedule.enabled and schedule.misfire_policy == "skip"
    assert schedule.options == {"attempts": 5, "timeout": 120_000}
    [overview] = db.execute("SELECT * FROM scheduled_jobs_overview").fetchall()
    assert overview["name"] == "daily-backup"
    assert overview["cron_expression"] == "0 2 * * *"
    assert overview["next_run_at"] == schedule.next_run_at
    assert overview["timezone"] == "Europe/Berlin"
    assert overview["last_run_at"] is None
    shown = await capp.get_schedule("daily-backup", upcoming=3)
    assert [at.astimezone(ZoneInfo("Europe/Berlin")).hour for at in shown.upcoming] == [2, 2, 2]
    assert shown.to_dict()["upcoming"][0] == "2024-01-02T01:00:00+00:00"
    assert [s.name for s in await capp.schedules()] == ["daily-backup"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "minute field '61' is not valid"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"misfire": "later"}, "unknown misfire policy 'later'"),
        ({"queue": "Bad Queue"}, "invalid queue name 'Bad Queue'"),
        ({"payload": [1, 2]}, "payload must be a JSON object"),
        ({"priority": "urgent"}, "unknown priority 'urgent'"),
        ({"unique_key": "k"}, "option 'unique_key' cannot be used by a schedule"),
        ({"attempts": 0}, "attempts must be at least 1"),
        ({"max_catch_up": -1}, "max_catch_up must be an integer from 0 to 10000"),
        ({"name": "has space"}, "invalid schedule name 'has space'"),
    ],
)
async def test_invalid_definitions_store_nothing(
    capp: App, db: Any, kwargs: dict[str, Any], message: str
) -> None:
    fields: dict[str, Any] = {"name": "s", "type": "custom", "cron": "* * * * *", **kwargs}
    name, type_, cron = fields.pop("name"), fields.pop("type"), fields.pop("cron")
    with pytest.raises(ValidationError) as caught:
        await capp.schedule(name, type_, cron, **fields)
    assert message in str(caught.value)
    assert db.execute("SELECT count(*) AS n FROM job_schedules").fetchone()["n"] == 0


async def test_duplicate_names_conflict_and_replace_redefines(capp: App) -> None:
    await capp.schedule("report", "custom", "0 9 * * 1-5")
    with pytest.raises(Conflict, match="a schedule named 'report' already exists"):
        await capp.schedule("report", "custom", "0 10 * * *")
    replaced = await capp.schedule("report", "custom", "0 10 * * *", {"v": 2}, replace=True)
    assert replaced.cron_expression == "0 10 * * *" and replaced.payload == {"v": 2}
    assert replaced.next_run_at == datetime(2024, 1, 1, 10, 0, tzinfo=UTC) + timedelta(days=1)


async def test_unknown_schedule_is_not_found(capp: App) -> None:
    for action in (
        capp.get_schedule("nope"),
        capp.enable_schedule("nope"),
        capp.disable_schedule("nope"),
        capp.delete_schedule("nope"),
        capp.update_schedule("nope", cron="* * * * *"),
    ):
        with pytest.raises(NotFound, match="no schedule named 'nope'"):
            await action


async def test_sync_adapters(db_url: str, clock: FrozenClock) -> None:
    app = App(make_settings(db_url), clock=clock)
    try:
        app.schedule_sync("s", "custom", "*/5 * * * *", {"a": 1})
        assert app.get_schedule_sync("s").next_run_at == NOON
        assert app.disable_schedule_sync("s").next_run_at is None
        assert app.enable_schedule_sync("s").next_run_at == NOON
        assert app.update_schedule_sync("s", payload={"a": 2}).payload == {"a": 2}
        assert [s.name for s in app.schedules_sync()] == ["s"]
        assert app.delete_schedule_sync("s").name == "s"
        assert app.schedules_sync() == []
    finally:
        app.close_sync()


# ---------------------------------------------------------------- firing


async def test_a_fire_enqueues_one_job_with_the_schedules_options(
    capp: App, clock: FrozenClock, leader: Any, db: Any
) -> None:
    schedule = await capp.schedule(
        "tick",
        "custom",
        "* * * * *",
        {"n": 1},
        queue="low-priority",
        priority="low",
        attempts=7,
        timeout=5000,
        backoff={"type": "fixed", "delay": 100},
        metadata={"team": "ops"},
    )
    task = CronTask(capp.settings)
    await tick(task, leader, clock, NOON + timedelta(seconds=2))
    [job] = jobs(db)
    assert job["type"] == "custom" and job["payload"] == {"n": 1}
    assert job["queue"] == "low-priority" and job["priority"] == 20
    assert job["max_attempts"] == 7 and job["timeout_ms"] == 5000
    assert job["backoff"] == {"type": "fixed", "delay": 100}
    assert job["status"] == "pending"
    assert job["schedule_id"] == schedule.id
    assert job["scheduled_for"] == NOON
    assert job["metadata"] == {
        "team": "ops",
        "schedule": "tick",
        "fire_time": "2024-01-01T12:00:00+00:00",
    }
    assert job["created_at"] == NOON + timedelta(seconds=2)
    row = schedule_row(db, "tick")
    assert row["last_run_at"] == NOON
    assert row["next_run_at"] == NOON + timedelta(minutes=1)
    [fire] = db.execute("SELECT * FROM job_schedule_fires").fetchall()
    assert (fire["schedule_id"], fire["fire_time"], fire["job_id"]) == (
        schedule.id,
        NOON,
        job["id"],
    )
    # Again in the same second: nothing new is due.
    await tick(task, leader, clock)
    assert len(jobs(db)) == 1


async def test_defaults_follow_the_settings_like_any_job(
    capp: App, clock: FrozenClock, leader: Any, db: Any
) -> None:
    await capp.schedule("plain", "custom", "* * * * *")
    await tick(CronTask(capp.settings), leader, clock, NOON)
    [job] = jobs(db)
    assert job["max_attempts"] == capp.settings.retry_attempts
    assert job["timeout_ms"] == capp.settings.job_timeout_ms
    assert job["priority"] == 10 and job["queue"] == "default" and job["payload"] == {}


async def test_fired_jobs_run_like_any_other(capp: App, clock: FrozenClock, leader: Any) -> None:
    seen: list[dict[str, Any]] = []

    @capp.handler("report")
    async def report(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> str:
        seen.append(payload)
        return "done"

    await capp.schedule("report", "report", "* * * * *", {"kind": "daily"})
    await tick(CronTask(capp.settings), leader, clock, NOON)
    assert await capp.drain() == 1
    assert seen == [{"kind": "daily"}]


async def test_run_returns_the_wait_until_the_next_fire_capped(
    capp: App, clock: FrozenClock, leader: Any
) -> None:
    task = CronTask(capp.settings)
    assert await tick(task, leader, clock) == 1.0  # nothing defined
    await capp.schedule("every-second", "custom", "* * * * * *")
    assert await tick(task, leader, clock, NOON + timedelta(milliseconds=200)) == pytest.approx(0.8)
    await capp.update_schedule("every-second", cron="0 * * * *")
    assert await tick(task, leader, clock) == 1.0


@pytest.mark.parametrize(("policy", "expected"), [("skip", 0), ("run_once", 1), ("catch_up", 5)])
async def test_five_minutes_without_workers(
    capp: App, clock: FrozenClock, leader: Any, db: Any, policy: str, expected: int
) -> None:
    await capp.schedule("minutely", "custom", "* * * * *", misfire=policy)
    task = CronTask(capp.settings)
    await tick(task, leader, clock, NOON + timedelta(seconds=1))
    assert fire_times(db) == [NOON]
    # Workers stop at 12:00:30 and come back five minutes later.
    await tick(task, leader, clock, NOON + timedelta(minutes=5, seconds=30))
    catch_ups = [job for job in jobs(db) if job["metadata"].get("catch_up")]
    assert len(catch_ups) == expected
    assert all(job["metadata"]["catch_up"] == policy for job in catch_ups)
    if policy == "run_once":
        assert catch_ups[0]["scheduled_for"] == NOON + timedelta(minutes=5)
    if policy == "catch_up":
        assert [j["scheduled_for"] for j in catch_ups] == [
            NOON + timedelta(minutes=m) for m in range(1, 6)
        ]
    assert schedule_row(db, "minutely")["next_run_at"] == NOON + timedelta(minutes=6)
    # Then on time again, whatever the policy.
    await tick(task, leader, clock, NOON + timedelta(minutes=6, seconds=1))
    assert fire_times(db)[-1] == NOON + timedelta(minutes=6)
    assert len(jobs(db)) == 1 + expected + 1


async def test_catch_up_is_bounded_by_max_catch_up(
    capp: App, clock: FrozenClock, leader: Any, db: Any
) -> None:
    await capp.schedule("minutely", "custom", "* * * * *", misfire="catch_up", max_catch_up=3)
    await tick(CronTask(capp.settings), leader, clock, NOON + timedelta(hours=2, seconds=30))
    # Found at 14:00:30: every slot up to 14:00 was missed; the latest three fire.
    assert fire_times(db) == [NOON + timedelta(hours=1, minutes=m) for m in (58, 59, 60)]


# ---------------------------------------------------------------- exactly once


async def test_a_recorded_fire_is_never_enqueued_again(
    capp: App, clock: FrozenClock, leader: Any, db: Any
) -> None:
    """A round whose plan passes every other check (here: next_run_at set back by hand,
    as a stale leader would see it) still cannot enqueue a recorded fire twice."""
    await capp.schedule("s", "custom", "* * * * *", misfire="catch_up")
    task = CronTask(capp.settings)
    for minute in range(3):
        await tick(task, leader, clock, NOON + timedelta(minutes=minute, seconds=1))
    assert len(jobs(db)) == 3
    db.execute("UPDATE job_schedules SET next_run_at = %s", (NOON,))
    await tick(CronTask(capp.settings), leader, clock)
    assert fire_times(db) == [NOON + timedelta(minutes=m) for m in range(3)]
    assert schedule_row(db, "s")["next_run_at"] == NOON + timedelta(minutes=3)


async def test_two_leaders_at_once_never_enqueue_a_fire_twice(
    capp: App, clock: FrozenClock, db_url: str, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Two tasks run their rounds concurrently on two connections, without the leader
    lock, over a per-second schedule and a per-minute one, with steps of 0-3 s."""
    clock.set(NOON)
    await capp.schedule("fast", "custom", "* * * * * *", misfire="catch_up")
    await capp.schedule("slow", "custom", "* * * * *", misfire="catch_up")
    tasks = [CronTask(capp.settings), CronTask(capp.settings)]
    conns = [
        await psycopg.AsyncConnection.connect(db_url, autocommit=True, row_factory=dict_row)
        for _ in tasks
    ]
    rng = random.Random(7)
    caplog.set_level("DEBUG", logger="pgjobs.cron")
    try:
        for _ in range(150):
            clock.advance(rng.choice([0, 0.5, 1, 1, 2, 3]))
            await asyncio.gather(*(tick(t, c, clock) for t, c in zip(tasks, conns, strict=True)))
    finally:
        for conn in conns:
            await conn.close()
    end = clock.now()
    rows = db.execute(
        "SELECT s.name, j.scheduled_for FROM jobs j JOIN job_schedules s ON s.id = j.schedule_id"
    ).fetchall()
    fast = sorted(r["scheduled_for"] for r in rows if r["name"] == "fast")
    slow = sorted(r["scheduled_for"] for r in rows if r["name"] == "slow")
    seconds = int((end - NOON).total_seconds())
    assert fast == [NOON + timedelta(seconds=s) for s in range(1, seconds + 1)]
    assert slow == [NOON + timedelta(minutes=m) for m in range(1, seconds // 60 + 1)]
    fires = db.execute("SELECT count(*) AS n FROM job_schedule_fires").fetchone()["n"]
    assert fires == len(rows)
    # The rounds really did overlap: some plans lost the race and were dropped.
    assert any("plans were dropped" in r.message for r in caplog.records)


# ---------------------------------------------------------------- runtime edits


async def test_edits_take_effect_on_the_next_round(
    capp: App, clock: FrozenClock, leader: Any, db: Any
) -> None:
    await capp.schedule("s", "custom", "0 * * * *", {"v": 1})
    task = CronTask(capp.settings)
    await tick(task, leader, clock, NOON + timedelta(seconds=1))
    assert fire_times(db) == [NOON]

    # A new expression: next_run_at is recomputed at once, and the next round follows it.
    edited = await capp.update_schedule("s", cron="*/10 * * * *")
    assert edited.next_run_at == NOON + timedelta(minutes=10)
    await tick(task, leader, clock, NOON + timedelta(minutes=10, seconds=1))
    assert fire_times(db)[-1] == NOON + timedelta(minutes=10)

    # A new payload: the next fire carries it.
    await capp.update_schedule("s", payload={"v": 2})
    await tick(task, leader, clock, NOON + timedelta(minutes=20, seconds=1))
    assert jobs(db)[-1]["payload"] == {"v": 2}

    # A new timezone: slots are local times there.
    edited = await capp.update_schedule("s", cron="0 14 * * *", timezone="America/New_York")
    assert edited.next_run_at == datetime(2024, 1, 1, 19, 0, tzinfo=UTC)

    # Disabled: no fires, no next run.
    assert (await capp.disable_schedule("s")).next_run_at is None
    await tick(task, leader, clock, datetime(2024, 1, 1, 19, 0, 1, tzinfo=UTC))
    assert len(jobs(db)) == 3

    # Enabled again: from now on, nothing for the time it was off, whatever the policy.
    await capp.update_schedule("s", misfire="catch_up")
    clock.set(datetime(2024, 1, 3, 0, 0, tzinfo=UTC))
    enabled = await capp.enable_schedule("s")
    assert enabled.next_run_at == datetime(2024, 1, 3, 19, 0, tzinfo=UTC)
    await tick(task, leader, clock)
    assert len(jobs(db)) == 3

    # Deleted: gone, with its fire records; the jobs it made stay.
    await capp.delete_schedule("s")
    await tick(task, leader, clock, datetime(2024, 1, 3, 19, 0, 1, tzinfo=UTC))
    assert len(jobs(db)) == 3
    assert db.execute("SELECT count(*) AS n FROM job_schedule_fires").fetchone()["n"] == 0


async def test_rename_and_rename_conflict(capp: App) -> None:
    await capp.schedule("a", "custom", "* * * * *")
    await capp.schedule("b", "custom", "* * * * *")
    with pytest.raises(Conflict, match="a schedule named 'b' already exists"):
        await capp.update_schedule("a", name="b")
    assert (await capp.update_schedule("a", name="c")).name == "c"
    with pytest.raises(ValidationError, match="unknown schedule field 'color'"):
        await capp.update_schedule("c", color="red")


async def test_an_edit_by_sql_is_picked_up_without_firing_the_stale_slot(
    capp: App, clock: FrozenClock, leader: Any, db: Any
) -> None:
    """A row edited with the job_schedules trigger off (or before it existed) keeps its
    stale next_run_at: the task itself still refuses to fire it. (With the trigger on,
    tests/db/test_schedule_sql_edits.py.)"""
    await capp.schedule("digest", "custom", "0 9 * * *")
    db.execute("SET session_replication_role = replica")
    db.execute("UPDATE job_schedules SET cron_expression = '0 18 * * *' WHERE name = 'digest'")
    task = CronTask(capp.settings)
    await tick(task, leader, clock, datetime(2024, 1, 2, 9, 0, 1, tzinfo=UTC))
    assert jobs(db) == []
    assert schedule_row(db, "digest")["next_run_at"] == datetime(2024, 1, 2, 18, 0, tzinfo=UTC)
    await tick(task, leader, clock, datetime(2024, 1, 2, 18, 0, 1, tzinfo=UTC))
    assert fire_times(db) == [datetime(2024, 1, 2, 18, 0, tzinfo=UTC)]
    # A schedule inserted with SQL only (no next_run_at) is picked up too.
    db.execute(
        "INSERT INTO job_schedules (name, type, cron_expression, payload) "
        "VALUES ('raw', 'custom', '*/5 * * * *', '{}')"
    )
    await tick(task, leader, clock)
    assert schedule_row(db, "raw")["next_run_at"] == datetime(2024, 1, 2, 18, 5, tzinfo=UTC)


async def test_a_broken_hand_edited_schedule_does_not_block_others(
    capp: App, clock: FrozenClock, leader: Any, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await capp.schedule("good", "custom", "* * * * *")
    await capp.schedule("bad", "custom", "* * * * *")
    # The trigger refuses such an edit; rows from before it, or written with triggers
    # off, can still hold one.
    db.execute("SET session_replication_role = replica")
    db.execute("UPDATE job_schedules SET cron_expression = 'nonsense' WHERE name = 'bad'")
    task = CronTask(capp.settings, batch_size=1)

    async def rounds(at: datetime) -> None:
        # As the maintenance loop does: a round that filled its batch runs again at once.
        while await tick(task, leader, clock, at) == 0.0:
            pass

    for minute in range(3):
        await rounds(NOON + timedelta(minutes=minute, seconds=1))
    assert len(fire_times(db)) == 3
    assert sum("'bad' is skipped until it is fixed" in r.message for r in caplog.records) == 1
    db.execute("UPDATE job_schedules SET cron_expression = '* * * * *' WHERE name = 'bad'")
    await rounds(NOON + timedelta(minutes=3, seconds=1))
    await rounds(NOON + timedelta(minutes=4, seconds=1))
    names = db.execute(
        "SELECT s.name FROM jobs j JOIN job_schedules s ON s.id = j.schedule_id "
        "WHERE j.scheduled_for = %s",
        (NOON + timedelta(minutes=4),),
    ).fetchall()
    assert sorted(r["name"] for r in names) == ["bad", "good"]


# ---------------------------------------------------------------- DST end to end


async def test_a_year_of_daily_fires_in_berlin(
    capp: App, clock: FrozenClock, leader: Any, db: Any
) -> None:
    """`0 2 * * *` in Europe/Berlin through 2024: one job per local day, 366 in all,
    at 03:00 on the spring-forward day and at the first 02:00 on the fall-back day."""
    berlin = ZoneInfo("Europe/Berlin")
    clock.set(datetime(2024, 1, 1, tzinfo=berlin))
    await capp.schedule("nightly", "custom", "0 2 * * *", timezone="Europe/Berlin")
    task = CronTask(capp.settings)
    end = datetime(2025, 1, 1, tzinfo=berlin)
    while True:
        next_run = schedule_row(db, "nightly")["next_run_at"]
        if next_run >= end:
            break
        await tick(task, leader, clock, next_run + timedelta(seconds=2))
    fired = [at.astimezone(berlin) for at in fire_times(db)]
    assert len(fired) == 366
    assert len({f.date() for f in fired}) == 366
    by_day = {f.date(): f for f in fired}
    assert by_day[datetime(2024, 3, 31).date()].hour == 3
    assert by_day[datetime(2024, 10, 27).date()].utcoffset() == timedelta(hours=2)
    assert all(f.hour == 2 for day, f in by_day.items() if day.isoformat() != "2024-03-31")


@pytest.mark.parametrize(
    ("zone", "cron", "day", "expected_utc"),
    [
        ("Europe/Berlin", "0 2 * * *", (2024, 3, 31), [datetime(2024, 3, 31, 1, tzinfo=UTC)]),
        ("Europe/Berlin", "0 2 * * *", (2024, 10, 27), [datetime(2024, 10, 27, 0, tzinfo=UTC)]),
        (
            "Europe/Berlin",
            "30 1 * * *",
            (2024, 10, 27),
            [datetime(2024, 10, 26, 23, 30, tzinfo=UTC)],
        ),
        ("America/New_York", "0 2 * * *", (2024, 3, 10), [datetime(2024, 3, 10, 7, tzinfo=UTC)]),
        (
            "America/New_York",
            "30 1 * * *",
            (2024, 11, 3),
            [datetime(2024, 11, 3, 5, 30, tzinfo=UTC)],
        ),
        ("America/New_York", "0 2 * * *", (2024, 11, 3), [datetime(2024, 11, 3, 7, tzinfo=UTC)]),
    ],
)
async def test_dst_days_fire_once_with_a_leader_ticking_all_night(
    capp: App,
    clock: FrozenClock,
    leader: Any,
    db: Any,
    zone: str,
    cron: str,
    day: tuple[int, int, int],
    expected_utc: list[datetime],
) -> None:
    tz = ZoneInfo(zone)
    start = datetime(*day, tzinfo=tz) - timedelta(hours=1)
    clock.set(start)
    await capp.schedule("dst", "custom", cron, timezone=zone)
    task = CronTask(capp.settings)
    # The leader wakes when a fire is due (2 s late) and every 10 minutes besides.
    at = start
    while at < start + timedelta(hours=26):
        next_run = schedule_row(db, "dst")["next_run_at"]
        at = min(at + timedelta(minutes=10), next_run + timedelta(seconds=2))
        await tick(task, leader, clock, at)
    assert fire_times(db) == expected_utc
