"""Unique jobs: one live holder per key, decided by the unique index (never
check-then-insert): under 1,000 concurrent creates from 20 connections, when the
creating transaction rolls back, with `uniqueFor` periods and `uniqueStates`, and with
`onConflict` return or raise."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row

from pgjobs.app import App
from pgjobs.clock import FrozenClock
from pgjobs.errors import Conflict, ValidationError
from tests.conftest import make_settings
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[Any]
LIVE = ("pending", "delayed", "active", "blocked")


def live_jobs(db: Conn, key: str) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT id, status FROM jobs WHERE unique_key = %s AND status = ANY(%s)", (key, list(LIVE))
    ).fetchall()


def holders(db: Conn, key: str) -> list[UUID]:
    rows = db.execute(
        "SELECT id FROM jobs WHERE unique_key = %s AND unique_released_at IS NULL", (key,)
    ).fetchall()
    return [r["id"] for r in rows]


@pytest.fixture
def connections(db_url: str) -> Iterator[Callable[[int], list[Conn]]]:
    opened: list[Conn] = []

    def open_many(count: int, autocommit: bool = True) -> list[Conn]:
        conns = [
            psycopg.connect(db_url, autocommit=autocommit, row_factory=dict_row)
            for _ in range(count)
        ]
        opened.extend(conns)
        return conns

    yield open_many
    for conn in opened:
        conn.close()


# ------------------------------------------------------------------ semantics


async def test_second_create_returns_the_live_job_or_raises(app: App, db: Conn) -> None:
    first = await app.create("sync-user", {"u": 1}, unique_key="user:1")
    again = await app.create("sync-user", {"u": 2}, unique_key="user:1")
    assert again.id == first.id and again.payload == {"u": 1}
    with pytest.raises(Conflict) as raised:
        await app.create("sync-user", unique_key="user:1", on_conflict="raise")
    assert str(raised.value) == f"unique key 'user:1' is held by job {first.id} (pending)"
    with pytest.raises(Conflict):
        await app.create_many(
            [{"type": "t", "options": {"uniqueKey": "user:1", "onConflict": "raise"}}]
        )
    assert len(live_jobs(db, "user:1")) == 1


async def test_a_finished_holder_frees_its_key(app: App, db: Conn) -> None:
    first = await app.create("t", unique_key="k")
    db.execute("UPDATE jobs SET status = 'completed' WHERE id = %s", (first.id,))
    second = await app.create("t", unique_key="k")
    assert second.id != first.id
    assert holders(db, "k") == [second.id]
    released = db.execute(
        "SELECT unique_released_at FROM jobs WHERE id = %s", (first.id,)
    ).fetchone()
    assert released["unique_released_at"] is not None


async def test_unique_states_choose_what_counts(app: App, db: Conn) -> None:
    # Only a waiting job counts: one already running does not stop a new one.
    running = await app.create("t", unique_key="w", unique_states=["pending", "delayed"])
    db.execute("UPDATE jobs SET status = 'active' WHERE id = %s", (running.id,))
    fresh = await app.create("t", unique_key="w", unique_states=["pending", "delayed"])
    assert fresh.id != running.id
    assert (await app.create("t", unique_key="w", unique_states=["pending"])).id == fresh.id
    # Completed jobs count too: the key is taken once and for all (until pruned).
    once = await app.create("t", unique_key="once", unique_states=[*LIVE, "completed"])
    db.execute("UPDATE jobs SET status = 'completed' WHERE id = %s", (once.id,))
    same = await app.create("t", unique_key="once", unique_states=[*LIVE, "completed"])
    assert same.id == once.id and same.status == "completed"


async def test_unique_for_keeps_the_key_for_a_period(db_url: str, db: Conn) -> None:
    clock = FrozenClock(datetime(2031, 3, 1, 12, 0, tzinfo=UTC))
    async with App(make_settings(db_url), clock=clock) as app:
        first = await app.create("report", unique_key="daily", unique_for=60_000)
        db.execute("UPDATE jobs SET status = 'completed' WHERE id = %s", (first.id,))
        clock.advance(59)
        # Finished, but created within the period: still the job for this key.
        assert (await app.create("report", unique_key="daily", unique_for=60_000)).id == first.id
        with pytest.raises(Conflict):
            await app.create("report", unique_key="daily", unique_for=60_000, on_conflict="raise")
        clock.advance(2)
        second = await app.create("report", unique_key="daily", unique_for=60_000)
        assert second.id != first.id
        # A live job counts whatever its age.
        clock.advance(timedelta(days=3))
        assert (await app.create("report", unique_key="daily", unique_for=60_000)).id == second.id


async def test_unique_options_are_validated(app: App) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"unique_for": 1000}, "uniqueFor needs a uniqueKey"),
        ({"on_conflict": "raise"}, "onConflict needs a uniqueKey"),
        ({"unique_key": "k", "on_conflict": "replace"}, "onConflict must be 'return' or 'raise'"),
        ({"unique_key": "k", "unique_for": -1}, "uniqueFor must be a non-negative number"),
        ({"unique_key": "k", "unique_states": "pending"}, "uniqueStates must be a list"),
        ({"unique_key": "k", "unique_states": []}, "uniqueStates must be a non-empty list"),
        ({"unique_key": "k", "unique_states": ["done"]}, "uniqueStates must be a non-empty"),
    ]
    for options, message in cases:
        with pytest.raises(ValidationError, match=message):
            await app.create("t", **options)
    with pytest.raises(ValidationError, match="job 0: uniqueFor needs a uniqueKey"):
        await app.create_many([{"type": "t", "options": {"uniqueFor": 5}}])


async def test_a_batch_job_deduplicated_to_a_holder_redirects_its_dependents(
    app: App, db: Conn
) -> None:
    holder = await app.create("sync", unique_key="user:9")
    sync = app.build("sync", unique_key="user:9")
    notify = app.build("notify", depends_on=sync)
    created = await app.flow([sync, notify])
    assert created.ids == [holder.id, notify.id]
    assert (await app.get(notify.id)).depends_on == [holder.id]
    db.execute("UPDATE jobs SET status = 'active', attempts = 1 WHERE id = %s", (holder.id,))
    await app.cancel(holder.id)  # a running job: only flagged; nothing changes yet
    assert (await app.get(notify.id)).status == "blocked"
    # The holder already completed: the redirected dependent runs at once.
    done = await app.create("sync", unique_key="user:10")
    db.execute("UPDATE jobs SET status = 'completed' WHERE id = %s", (done.id,))
    again = app.build("sync", unique_key="user:10", unique_states=[*LIVE, "completed"])
    after = app.build("notify", depends_on=again)
    await app.flow([again, after])
    assert (await app.get(after.id)).status == "pending"


# ------------------------------------------------------------------ concurrency


@pytest.mark.slow
def test_concurrent_creates_of_one_key_make_exactly_one_job(
    sync_app: App, db: Conn, connections: Callable[..., list[Conn]]
) -> None:
    """1,000 creates of one key from 20 connections at once, 100 times: each round ends
    with exactly one live job, every create got that job, and nothing else was raised."""
    conns = connections(20)
    rounds, per_conn = 100, 50
    barrier = threading.Barrier(len(conns))
    results: list[list[UUID]] = [[] for _ in conns]
    errors: list[BaseException] = []

    def producer(index: int) -> None:
        conn = conns[index]
        try:
            for round_no in range(rounds):
                barrier.wait(30)
                key = f"key-{round_no}"
                for _ in range(per_conn):
                    job = sync_app.create_sync("t", unique_key=key, conn=conn)
                    results[index].append(job.id)
        except BaseException as exc:  # reported below, with every other thread's
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=producer, args=(i,)) for i in range(len(conns))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    for round_no in range(rounds):
        [job] = live_jobs(db, f"key-{round_no}")
        got = {
            ids[i] for ids in results for i in range(round_no * per_conn, (round_no + 1) * per_conn)
        }
        assert got == {job["id"]}
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == rounds


def test_concurrent_creates_with_raise_give_one_job_and_only_conflicts(
    sync_app: App, db: Conn, connections: Callable[..., list[Conn]]
) -> None:
    conns = connections(20)
    barrier = threading.Barrier(len(conns))
    created: list[UUID] = []
    conflicts: list[Conflict] = []
    others: list[BaseException] = []

    def producer(conn: Conn) -> None:
        barrier.wait(30)
        for _ in range(50):
            try:
                created.append(
                    sync_app.create_sync("t", unique_key="one", on_conflict="raise", conn=conn).id
                )
            except Conflict as exc:
                conflicts.append(exc)
            except BaseException as exc:
                others.append(exc)

    threads = [threading.Thread(target=producer, args=(c,)) for c in conns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert others == []
    assert len(created) == 1 and len(conflicts) == 999
    assert [j["id"] for j in live_jobs(db, "one")] == created


def test_a_rolled_back_create_leaves_room_for_exactly_one(
    sync_app: App, db: Conn, connections: Callable[..., list[Conn]]
) -> None:
    """The first creator's transaction holds the key while 19 others wait on it; it rolls
    back, and exactly one of the waiting creates takes the key, the others get it."""
    rounds = 20
    for round_no in range(rounds):
        key = f"rb-{round_no}"
        [first] = connections(1, autocommit=False)
        others = connections(19)
        doomed = sync_app.create_sync("t", unique_key=key, conn=first)
        got: list[UUID] = []
        errors: list[BaseException] = []

        def create(conn: Conn, key: str, got: list[UUID], errors: list[BaseException]) -> None:
            try:
                got.append(sync_app.create_sync("t", unique_key=key, conn=conn).id)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=create, args=(c, key, got, errors)) for c in others]
        for thread in threads:
            thread.start()
        wait_until(
            lambda: (
                db.execute(
                    "SELECT count(*) AS n FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchone()["n"]
                == 19
            ),
            message="every other create to wait for the first transaction",
        )
        first.rollback()
        for thread in threads:
            thread.join(30)
        assert errors == []
        [job] = live_jobs(db, key)
        assert job["id"] != doomed.id
        assert got == [job["id"]] * 19
        for conn in (first, *others):
            conn.close()
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == rounds
