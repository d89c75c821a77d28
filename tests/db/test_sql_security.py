"""What database logins other than the operator's can do (schema.sql migration 7).

- Any login may LISTEN and NOTIFY on any channel. A NOTIFY on pgjobs_cancel cancels
  nothing (the worker acts on cancel_requested_at only), and what pgjobs NOTIFYs
  carries no job id, type or payload: events are read from a table strangers cannot read.
- A login granted pgjobs_producer creates only the job types of the producer allowlist
  (`pgjobs producer-types`), and a unique key held by another job tells it that job's
  id and status only.
- Job types follow one rule on every entry point (the shared cases in sql_api_cases.py).

Every attack runs as a real login role created for the test.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

import pgjobs
from pgjobs.app import App
from pgjobs.config import Settings
from tests.conftest import make_settings
from tests.helpers import wait_until_async
from tests.pgjobs_cli import run_pgjobs
from tests.roles import login_role, url_as

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def stranger_url(db_url: str) -> Iterator[str]:
    """Any database login: no grant at all."""
    with login_role() as role:
        yield url_as(db_url, role)


@pytest.fixture
def producer_url(db_url: str) -> Iterator[str]:
    """A login granted pgjobs_producer and nothing else."""
    with login_role("pgjobs_producer") as role:
        yield url_as(db_url, role)


def connect(url: str) -> Conn:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def job_row(db: Conn, job_id: Any) -> dict[str, Any]:
    row = db.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


# ------------------------------------------------------------------ cancel notifications


@pytest.fixture
async def holding_app(db_url: str) -> AsyncIterator[tuple[App, dict[str, Any]]]:
    # A long heartbeat: within the test only a notification can make the worker cancel.
    app = App(make_settings(db_url, JOBS_HEARTBEAT_INTERVAL="30000"), builtin_types=False)
    state: dict[str, Any] = {"started": set(), "release": asyncio.Event(), "cancelled": set()}

    @app.handler("hold")
    async def hold(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> str:
        state["started"].add(ctx.id)
        try:
            await state["release"].wait()
        except asyncio.CancelledError:
            state["cancelled"].add(ctx.id)
            raise
        return "done"

    try:
        yield app, state
    finally:
        await app.close()


@pytest.mark.anyio
async def test_a_strangers_cancel_notify_does_not_cancel_a_running_job(
    holding_app: tuple[App, dict[str, Any]], stranger_url: str, db: Conn
) -> None:
    app, state = holding_app
    async with app.worker(["default"], concurrency=3) as worker:
        await worker.wait_listening()
        target = await app.create("hold", {})
        by_api = await app.create("hold", {})
        by_sql = await app.create("hold", {})

        async def all_started() -> bool:
            return state["started"] == {target.id, by_api.id, by_sql.id}

        await wait_until_async(all_started, timeout=10)
        with connect(stranger_url) as stranger:
            # Old payload (the job id), new payload (the worker id), and garbage.
            for payload in (str(target.id), str(worker.id), "not-a-uuid"):
                stranger.execute("SELECT pg_notify('pgjobs_cancel', %s)", (payload,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                stranger.execute("SELECT * FROM pgjobs_cancel(%s)", (target.id,))
        # Real cancels after the stranger's notifications: the listener receives them in
        # this order, so once these took effect the stranger's had been seen.
        await app.cancel(by_api.id)
        db.execute("SELECT * FROM pgjobs_cancel(%s)", (by_sql.id,))

        async def both_cancelled() -> bool:
            rows = db.execute(
                "SELECT count(*) AS n FROM jobs WHERE id = ANY (%s) AND status = 'cancelled'",
                ([by_api.id, by_sql.id],),
            ).fetchone()
            return rows is not None and rows["n"] == 2

        await wait_until_async(both_cancelled, timeout=5)
        assert state["cancelled"] == {by_api.id, by_sql.id}
        assert job_row(db, target.id)["status"] == "active"
        state["release"].set()
        assert await app.wait(target.id, timeout=10) == "done"
    row = job_row(db, target.id)
    assert (row["status"], row["cancel_requested_at"]) == ("completed", None)
    audit = db.execute("SELECT actor, action, target FROM job_audit").fetchall()
    assert audit == [{"actor": "sql:postgres", "action": "cancel", "target": str(by_sql.id)}]


# ------------------------------------------------------------------ what LISTEN shows


@pytest.mark.anyio
async def test_a_stranger_listening_learns_no_job_ids_or_types(
    db_url: str, stranger_url: str, db: Conn
) -> None:
    settings: Settings = make_settings(db_url)
    app = App(settings, builtin_types=False)
    secret_types = ("secret-progress", "secret-fails", "secret-held", "secret-later")
    release = asyncio.Event()

    @app.handler("secret-progress")
    async def progress(ctx: pgjobs.JobContext, payload: Any) -> None:
        await ctx.progress(50)

    @app.handler("secret-fails")
    async def fails(ctx: pgjobs.JobContext, payload: Any) -> None:
        raise ValueError("no")

    @app.handler("secret-held")
    async def held(ctx: pgjobs.JobContext, payload: Any) -> None:
        await release.wait()

    channels = ("pgjobs_events", "pgjobs_jobs", "pgjobs_cancel", "pgjobs_delayed")
    marker = f"end-{uuid.uuid4()}"
    try:
        async with await psycopg.AsyncConnection.connect(stranger_url, autocommit=True) as spy:
            for channel in channels:
                await spy.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            seen_by_app = []
            async with app.events() as stream, app.worker(["default"], concurrency=4) as worker:
                await worker.wait_listening()
                jobs = [
                    await app.create("secret-progress", {"token": "p"}),
                    await app.create("secret-fails", {"token": "f"}, attempts=2, backoff=[0]),
                    await app.create("secret-held", {"token": "h"}),
                    await app.create("secret-later", {"token": "l"}, delay=60_000),
                ]

                async def held_started() -> bool:
                    return job_row(db, jobs[2].id)["status"] == "active"

                await wait_until_async(held_started, timeout=10)
                await app.cancel(jobs[2].id)
                waiting_for = {jobs[0].id, jobs[1].id, jobs[2].id}

                async def collect() -> None:
                    async for event in stream:
                        seen_by_app.append(event)
                        if event.event in ("completed", "failed", "cancelled"):
                            waiting_for.discard(event.id)
                        if not waiting_for:
                            return

                await asyncio.wait_for(collect(), 20)
            db.execute("SELECT pg_notify('pgjobs_events', %s)", (marker,))
            payloads = []
            while not payloads or payloads[-1][1] != marker:
                # One at a time: leaving notifies() early would leave it running.
                before = len(payloads)
                async for note in spy.notifies(timeout=10, stop_after=1):
                    payloads.append((note.channel, note.payload))
                assert len(payloads) > before, "the end marker never arrived"
            payloads.pop()
    finally:
        await app.close()
    # The consumer with access got the events, with ids and types ...
    assert {e.type for e in seen_by_app} >= {"secret-progress", "secret-fails", "secret-held"}
    assert {"progress", "retrying", "failed", "cancelled", "completed"} <= {
        e.event for e in seen_by_app
    }
    # ... while the stranger saw notifications, but nothing that names a job.
    assert {channel for channel, _ in payloads} >= {"pgjobs_events", "pgjobs_jobs"}
    for _, payload in payloads:
        for job in jobs:
            assert str(job.id) not in payload and job.id.hex not in payload
        assert not any(name in payload for name in secret_types), payload
        assert "token" not in payload
    # Nor can it read the events themselves.
    with connect(stranger_url) as stranger, pytest.raises(psycopg.errors.InsufficientPrivilege):
        stranger.execute("SELECT * FROM job_event_batches")


@pytest.mark.anyio
async def test_a_stranger_can_neither_replay_nor_suppress_events(
    db_url: str, stranger_url: str
) -> None:
    app = App(make_settings(db_url), builtin_types=False)

    @app.handler("double")
    async def double(ctx: pgjobs.JobContext, payload: dict[str, int]) -> int:
        return payload["n"] * 2

    async def completed(stream: Any, job_id: Any, seen: list[Any]) -> None:
        async for event in stream:
            seen.append(event)
            if (event.event, event.id) == ("completed", job_id):
                return

    seen: list[Any] = []
    try:
        with connect(stranger_url) as stranger:
            async with app.events() as stream, app.worker(["default"], concurrency=2) as worker:
                await worker.wait_listening()
                # Announce the batch ids the real events are about to get.
                for batch in range(1, 200):
                    stranger.execute("SELECT pg_notify('pgjobs_events', %s)", (str(batch),))
                first = await app.create("double", {"n": 1})
                await asyncio.wait_for(completed(stream, first.id, seen), 15)
                # Announce them all again: nothing already delivered comes twice.
                for batch in range(1, 200):
                    stranger.execute("SELECT pg_notify('pgjobs_events', %s)", (str(batch),))
                second = await app.create("double", {"n": 2})
                await asyncio.wait_for(completed(stream, second.id, seen), 15)
    finally:
        await app.close()
    assert [(e.event, e.id) for e in seen] == [("completed", first.id), ("completed", second.id)]


def test_event_batches_are_pruned_after_five_minutes(db: Conn) -> None:
    db.execute(
        "INSERT INTO job_event_batches (at, events) "
        "SELECT now() - interval '6 minutes', '[]' FROM generate_series(1, 100)"
    )
    db.execute(
        "INSERT INTO job_event_batches (at, events) "
        "SELECT now() - interval '1 minute', '[]' FROM generate_series(1, 10)"
    )
    event = json.dumps(["completed", str(uuid.uuid4()), "default", "t", "completed", None])
    for _ in range(64):
        db.execute("SELECT pgjobs_notify_events(ARRAY[%s])", (event,))
    row = db.execute(
        "SELECT count(*) FILTER (WHERE at < now() - interval '5 minutes') AS old, "
        "count(*) AS total FROM job_event_batches"
    ).fetchone()
    assert row == {"old": 0, "total": 10 + 64}


# ------------------------------------------------------------------ producer allowlist


def enqueue(conn: Conn, type_: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    row = conn.execute(
        "SELECT * FROM pgjobs_enqueue(%s, %s::jsonb, %s::jsonb)",
        (type_, json.dumps({"path": "/var/lib/postgresql"}), json.dumps(options or {})),
    ).fetchone()
    assert row is not None
    return row


def refused(conn: Conn, statement: str, *args: Any) -> str:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
        conn.execute(statement, args)
    return exc.value.diag.message_primary or ""


def not_allowed(type_: str) -> str:
    return (
        f"job type '{type_}' may not be enqueued through the SQL API: it is not in the "
        "producer allowlist (pgjobs producer-types)"
    )


def test_a_producer_cannot_enqueue_operator_types(producer_url: str, db: Conn) -> None:
    with connect(producer_url) as producer:
        for type_ in ("file-cleanup", "database-backup", "custom"):
            assert refused(
                producer, "SELECT * FROM pgjobs_enqueue(%s, '{}')", type_
            ) == not_allowed(type_)
        batch = json.dumps([{"type": "send-email"}, {"type": "file-cleanup"}])
        message = refused(producer, "SELECT * FROM pgjobs_enqueue_many(%s::jsonb)", batch)
        assert message == "job 1: " + not_allowed("file-cleanup")
        assert enqueue(producer, "send-email")["status"] == "pending"
        assert enqueue(producer, "my-app:resize")["status"] == "pending"
    types = db.execute("SELECT type FROM jobs ORDER BY type").fetchall()
    assert [r["type"] for r in types] == ["my-app:resize", "send-email"]


def test_producer_types_set_by_the_cli_hold_at_once(
    producer_url: str, db_url: str, db: Conn, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": db_url}
    listed = run_pgjobs(["producer-types", "list"], tmp_path, env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "default: every job type except custom, database-backup, file-cleanup\n"
    with connect(producer_url) as producer:
        changed = run_pgjobs(["producer-types", "set", "file-cleanup", "report"], tmp_path, env)
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout == "file-cleanup\nreport\n"
        assert enqueue(producer, "file-cleanup")["status"] == "pending"
        assert enqueue(producer, "report")["status"] == "pending"
        # An explicit list replaces the default rule: send-email is no longer in it.
        assert refused(producer, "SELECT * FROM pgjobs_enqueue('send-email', '{}')") == not_allowed(
            "send-email"
        )
        reset = run_pgjobs(["producer-types", "reset"], tmp_path, env)
        assert reset.returncode == 0, reset.stderr
        assert refused(
            producer, "SELECT * FROM pgjobs_enqueue('file-cleanup', '{}')"
        ) == not_allowed("file-cleanup")
        assert enqueue(producer, "send-email")["status"] == "pending"
    bad = run_pgjobs(["producer-types", "set", "ok", "../etc"], tmp_path, env)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.splitlines() == [
        "error: invalid job type '../etc': use 1-100 characters A-Z a-z 0-9 . _ : - "
        "starting with a letter or digit"
    ]
    audit = db.execute("SELECT action, detail FROM job_audit ORDER BY id").fetchall()
    assert audit == [
        {"action": "producer-types", "detail": {"types": ["file-cleanup", "report"]}},
        {"action": "producer-types", "detail": {"types": None}},
    ]
    # `pgjobs init --producer-types` sets the list as part of an install or upgrade.
    init = run_pgjobs(["init", "--producer-types", "report, send-email"], tmp_path, env)
    assert init.returncode == 0, init.stderr
    assert init.stdout.splitlines()[-2:] == ["report", "send-email"]
    with connect(producer_url) as producer:
        assert enqueue(producer, "report")["status"] == "pending"
        assert refused(producer, "SELECT * FROM pgjobs_enqueue('resize', '{}')") == not_allowed(
            "resize"
        )


def test_a_producer_learns_only_id_and_status_of_a_unique_keys_holder(
    producer_url: str, db_url: str, db: Conn
) -> None:
    holder = enqueue(db, "report", {"uniqueKey": "nightly", "metadata": {"owner": "ops"}})
    db.execute('UPDATE jobs SET payload = \'{"token": "s3cret"}\' WHERE id = %s', (holder["id"],))
    with connect(producer_url) as producer:
        mine = enqueue(producer, "report", {"uniqueKey": "nightly"})
        [first, second] = producer.execute(
            "SELECT * FROM pgjobs_enqueue_many(%s::jsonb)",
            (
                json.dumps(
                    [
                        {"type": "report", "options": {"uniqueKey": "own"}},
                        {"type": "report", "options": {"uniqueKey": "nightly"}},
                    ]
                ),
            ),
        ).fetchall()
    with connect(db_url) as conn:
        # A superuser session that switched to the producer role is the producer too.
        conn.execute("SET ROLE pgjobs_producer")
        switched = enqueue(conn, "report", {"uniqueKey": "nightly"})
    for answer in (mine, second, switched):
        shown = {k: v for k, v in answer.items() if v is not None}
        assert shown == {"id": holder["id"], "status": "pending"}
    assert first["unique_key"] == "own" and first["type"] == "report"  # its own job: all of it
    # The operator (who may read jobs) still gets the whole row.
    again = enqueue(db, "report", {"uniqueKey": "nightly"})
    assert again["payload"] == {"token": "s3cret"} and again["id"] == holder["id"]


# ------------------------------------------------------------------ job type rule


@pytest.mark.parametrize("name", ["x'; DROP TABLE jobs; --", "../../etc/passwd", "a b"])
def test_sql_refuses_the_job_types_python_refuses(
    sync_app: App, producer_url: str, name: str, db: Conn
) -> None:
    with pytest.raises(pgjobs.ValidationError) as python:
        sync_app.create_sync(name)
    with connect(producer_url) as producer:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as single:
            producer.execute("SELECT * FROM pgjobs_enqueue(%s)", (name,))
        with pytest.raises(psycopg.errors.InvalidParameterValue) as many:
            producer.execute(
                "SELECT * FROM pgjobs_enqueue_many(%s::jsonb)", (json.dumps([{"type": name}]),)
            )
    assert single.value.diag.message_primary == str(python.value)
    assert many.value.diag.message_primary == f"job 0: {python.value}"
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone() == {"n": 0}
