"""Schedules edited with plain SQL: the job_schedules trigger validates the edit and moves
next_run_at with it, computing in SQL exactly what pgjobs/schedules/cron.py computes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgjobs
from pgjobs.app import App
from pgjobs.errors import ValidationError
from pgjobs.ops import Ops
from pgjobs.schedules.cron import Cron, _first_instant_with_offset, parse_cron
from tests.helpers import wait_until_async

# "Advanced Code Examples" → "Dynamic Cron Schedules", the statement inside db.execute.
SPEC_DYNAMIC_UPDATE = """UPDATE job_schedules
     SET cron_expression = $1,
         payload = jsonb_set(payload, '{timezone}', $2)
     WHERE name = $3"""


def db_now(db: Any) -> datetime:
    return db.execute("SELECT clock_timestamp() AS now").fetchone()["now"]


def schedule_row(db: Any, name: str) -> dict[str, Any]:
    return db.execute("SELECT * FROM job_schedules WHERE name = %s", (name,)).fetchone()


def expected_next(cron: str, zone: str, before: datetime, after: datetime) -> set[datetime]:
    """The next fire computed from either end of the window the edit ran in."""
    parsed = Cron.parse(cron, zone)
    return {parsed.next_fire(before), parsed.next_fire(after)}


# ---------------------------------------------------------------- the trigger


@pytest.mark.anyio
async def test_the_specs_dynamic_update_moves_the_next_run_everywhere(app: App, db: Any) -> None:
    await app.schedule("user-digest-42", "custom", "0 9 * * *", {"timezone": "UTC"})
    before = db_now(db)
    with psycopg.RawCursor(db) as cur:
        cur.execute(SPEC_DYNAMIC_UPDATE, ["0 18 * * *", '"Europe/Paris"', "user-digest-42"])
        assert cur.rowcount == 1
    after = db_now(db)
    wanted = expected_next("0 18 * * *", "UTC", before, after)
    row = schedule_row(db, "user-digest-42")
    assert row["payload"] == {"timezone": "Europe/Paris"}
    assert row["next_run_at"] in wanted
    shown = await app.get_schedule("user-digest-42", upcoming=2)
    assert shown.next_run_at == row["next_run_at"]
    assert shown.upcoming[1] == shown.upcoming[0] + timedelta(days=1)
    [view] = db.execute(
        "SELECT next_run_at FROM scheduled_jobs_overview WHERE name = 'user-digest-42'"
    ).fetchall()
    assert view["next_run_at"] == row["next_run_at"]


@pytest.mark.anyio
async def test_a_timezone_change_by_sql_moves_the_next_run(app: App, db: Any) -> None:
    await app.schedule("tz", "custom", "30 7 * * *")
    before = db_now(db)
    db.execute("UPDATE job_schedules SET timezone = 'America/New_York' WHERE name = 'tz'")
    after = db_now(db)
    row = schedule_row(db, "tz")
    assert row["next_run_at"] in expected_next("30 7 * * *", "America/New_York", before, after)
    assert row["updated_at"] >= before


@pytest.mark.anyio
async def test_disable_and_enable_by_sql(app: App, db: Any) -> None:
    await app.schedule("onoff", "custom", "*/5 * * * *")
    db.execute("UPDATE job_schedules SET enabled = false WHERE name = 'onoff'")
    assert schedule_row(db, "onoff")["next_run_at"] is None
    assert (await app.get_schedule("onoff")).next_run_at is None
    before = db_now(db)
    db.execute("UPDATE job_schedules SET enabled = true WHERE name = 'onoff'")
    after = db_now(db)
    # A future slot, not the ones missed while it was off.
    assert schedule_row(db, "onoff")["next_run_at"] in expected_next(
        "*/5 * * * *", "UTC", before, after
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("cron_expression = 'nonsense'", "invalid cron expression 'nonsense': expected 5 fields"),
        ("cron_expression = '0 25 * * *'", "invalid cron expression '0 25 * * *': hour field"),
        ("cron_expression = '0 0 30 2 *'", "it never matches a date"),
        ("timezone = 'Mars/Olympus'", "unknown timezone 'Mars/Olympus'"),
    ],
)
async def test_an_invalid_edit_by_sql_is_refused_and_changes_nothing(
    app: App, db: Any, change: str, message: str
) -> None:
    await app.schedule("kept", "custom", "0 9 * * *")
    before = schedule_row(db, "kept")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        db.execute(f"UPDATE job_schedules SET {change} WHERE name = 'kept'")
    assert message in str(caught.value)
    assert schedule_row(db, "kept") == before


@pytest.mark.anyio
async def test_pgjobs_own_edits_keep_their_clock(app: App, db: Any) -> None:
    """An edit through the API sets next_run_at itself; the trigger leaves it alone."""
    await app.schedule("api", "custom", "0 9 * * *")
    edited = await app.update_schedule("api", cron="0 10 * * *")
    assert schedule_row(db, "api")["next_run_at"] == edited.next_run_at
    assert edited.next_run_at is not None and edited.next_run_at.hour == 10


@pytest.mark.anyio
async def test_a_running_worker_never_fires_the_old_slot(app: App, db: Any) -> None:
    """The old slot is seconds away when SQL moves the schedule to next New Year; a
    per-second control schedule proves the worker's cron rounds ran past that slot."""
    beats: list[datetime] = []

    @app.handler("beat")
    async def beat(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        beats.append(datetime.now(UTC))

    @app.handler("moved")
    async def moved(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        raise AssertionError("the old slot fired")

    slot = (db_now(db) + timedelta(seconds=4)).replace(microsecond=0)
    await app.schedule("moved", "moved", f"{slot.minute} {slot.hour} * * * {slot.second}")
    assert schedule_row(db, "moved")["next_run_at"] == slot
    await app.schedule("beat", "beat", "* * * * * *")
    async with app.worker(["default"], concurrency=2):
        db.execute("UPDATE job_schedules SET cron_expression = '0 0 1 1 *' WHERE name = 'moved'")
        assert db_now(db) < slot, "the machine was too slow to edit before the slot"

        async def past_the_slot() -> bool:
            return any(at > slot + timedelta(seconds=2) for at in beats)

        await wait_until_async(past_the_slot, timeout=20, message="cron rounds past the slot")
    fired = db.execute(
        "SELECT count(*) AS n FROM jobs j JOIN job_schedules s ON s.id = j.schedule_id "
        "WHERE s.name = 'moved'"
    ).fetchone()
    assert fired["n"] == 0
    assert schedule_row(db, "moved")["next_run_at"].month == 1


# ---------------------------------------------------------------- SQL agrees with croniter


@cache
def zones() -> list[str]:
    return sorted(available_timezones())


def transitions(zone: str, year: int) -> list[datetime]:
    """The instants `zone` changes its UTC offset in `year`."""
    tz = ZoneInfo(zone)
    found = []
    at = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    step = timedelta(hours=6)
    while at < end:
        nxt = at + step
        if at.astimezone(tz).utcoffset() != nxt.astimezone(tz).utcoffset():
            found.append(_first_instant_with_offset(at, nxt, tz))
        at = nxt
    return found


DST_ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Pacific/Chatham",
    "Europe/London",
    "America/St_Johns",
]


@st.composite
def instants(draw: st.DrawFn, zone: str) -> datetime:
    """Mostly within hours of one of the zone's offset changes, else anywhere."""
    year = draw(st.integers(2020, 2032))
    changes = transitions(zone, year)
    if changes and draw(st.booleans()):
        base = draw(st.sampled_from(changes))
        delta = draw(st.integers(-4 * 3600 * 1000, 4 * 3600 * 1000))
        return base + timedelta(milliseconds=delta)
    start = datetime(year, 1, 1, tzinfo=UTC)
    return start + timedelta(seconds=draw(st.integers(0, 366 * 86400)))


def value(field: int) -> st.SearchStrategy[str]:
    top = (59, 23, 31, 12, 7, 59)[field]
    numbers = st.integers(0, top + 2).map(str)
    if field == 3:
        return st.one_of(numbers, st.sampled_from(["jan", "FEB", "Jun", "dec", "mon"]))
    if field == 4:
        return st.one_of(numbers, st.sampled_from(["sun", "MON", "Fri", "sat", "jan"]))
    return numbers


def item(field: int) -> st.SearchStrategy[str]:
    v = value(field)
    step = st.integers(0, 25).map(str)
    forms = [
        st.just("*"),
        st.builds(lambda s: f"*/{s}", step),
        v,
        st.builds(lambda a, b: f"{a}-{b}", v, v),
        st.builds(lambda a, b, s: f"{a}-{b}/{s}", v, v, step),
        st.builds(lambda a, s: f"{a}/{s}", v, step),
    ]
    if field in (2, 4):
        forms.append(st.just("?"))
    if field == 2:
        forms += [st.just("L"), st.builds(lambda a: f"{a}-L", v)]
    return st.one_of(*forms)


def cron_field(field: int) -> st.SearchStrategy[str]:
    return st.lists(item(field), min_size=1, max_size=3).map(",".join)


@st.composite
def expressions(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 20)) == 0:
        return draw(
            st.sampled_from(["@daily", "@HOURLY", "@weekly", "@monthly", "@yearly", "@often"])
        )
    count = draw(st.sampled_from([5, 5, 6]))
    return " ".join(draw(cron_field(i)) for i in range(count))


def sql_next(db: Any, expression: str, zone: str, after: datetime) -> datetime | None:
    try:
        with db.transaction():
            row = db.execute(
                "SELECT pgjobs_cron_next(%s, %s, %s) AS at", (expression, zone, after)
            ).fetchone()
    except psycopg.errors.InvalidParameterValue:
        return None
    return row["at"]


def python_next(expression: str, zone: str, after: datetime) -> datetime | None:
    try:
        parse_cron(expression)
    except ValidationError:
        return None
    return Cron.parse(expression, zone).next_fire(after)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), expression=expressions())
def test_sql_and_python_agree_on_every_expression(
    db: Any, data: st.DataObject, expression: str
) -> None:
    zone = data.draw(st.one_of(st.sampled_from(DST_ZONES), st.sampled_from(zones())))
    after = data.draw(instants(zone))
    assert sql_next(db, expression, zone, after) == python_next(expression, zone, after)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_sql_and_python_agree_around_dst_changes(db: Any, data: st.DataObject) -> None:
    """Daily, hourly and every-minute schedules at wall times DST skips or repeats."""
    zone = data.draw(st.sampled_from(DST_ZONES))
    expression = data.draw(
        st.sampled_from(
            [
                "30 2 * * *",
                "0 * * * *",
                "* * * * *",
                "15,45 1-3 * * *",
                "0 0 * * *",
                "*/20 * * * * 30",
                "0 2 * * sun",
            ]
        )
    )
    after = data.draw(instants(zone))
    at = after
    for _ in range(3):
        expected = python_next(expression, zone, at)
        assert sql_next(db, expression, zone, at) == expected
        assert expected is not None
        at = expected


@pytest.mark.anyio
async def test_pgjobs_writes_forms_the_sql_trigger_does_not_evaluate(app: Any, db: Any) -> None:
    """W, # and L<n> are croniter's (and pgjobs') forms that the trigger refuses in plain
    SQL edits; pgjobs' own writes, validated by croniter, still store and change them."""
    ops = Ops(app)
    await ops.create_schedule(
        {"name": "third-friday", "type": "t", "cron": "0 9 * * 5#3"}, actor="test"
    )
    await ops.update_schedule("third-friday", {"enabled": False}, actor="test")
    await ops.update_schedule("third-friday", {"enabled": True}, actor="test")
    await ops.update_schedule("third-friday", {"cron": "0 9 L * *"}, actor="test")
    row = db.execute(
        "SELECT cron_expression, enabled, next_run_at FROM job_schedules WHERE name = %s",
        ("third-friday",),
    ).fetchone()
    assert (row["cron_expression"], row["enabled"]) == ("0 9 L * *", True)
    assert row["next_run_at"] is not None
    # Plain SQL is still checked: the trigger refuses the form it cannot evaluate.
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute(
            "UPDATE job_schedules SET cron_expression = '0 9 * * 5#2' WHERE name = %s",
            ("third-friday",),
        )
