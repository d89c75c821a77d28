"""The SQL API (schema.sql migration 5): the same jobs and errors as the Python API,
enqueue from a trigger in the caller's transaction, bulk enqueue, the producer role,
and cancel/retry/pause/resume."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row

import pgjobs
from pgjobs.app import App
from pgjobs.errors import PgJobsError
from pgjobs.producer.options import keyword_options
from pgjobs.sql_api import record_settings
from tests.conftest import create_database, database_url, drop_database, make_settings
from tests.helpers import wait_until_async
from tests.sql_api_cases import CASES, PARENT_DONE, PARENT_FAILED, SETTINGS, Case

Conn = psycopg.Connection[dict[str, Any]]

COMPARED = (
    "type", "queue", "status", "priority", "payload", "attempts", "max_attempts", "delay_ms",
    "timeout_ms", "backoff", "unique_key", "depends_on", "dependency_policy", "rate_limit_key",
    "metadata", "last_error",
)  # fmt: skip


@pytest.fixture
def second_db_url(template_db: str) -> Iterator[str]:
    name = create_database(template_db)
    try:
        yield database_url(name)
    finally:
        drop_database(name)


def connect(url: str) -> Conn:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def seed_parents(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO jobs (id, type, status, completed_at) VALUES "
        "(%s, 'parent', 'completed', now()), (%s, 'parent', 'failed', now())",
        (PARENT_DONE, PARENT_FAILED),
    )


def resolve(options: dict[str, Any], ids: dict[str, UUID]) -> dict[str, Any]:
    deps = options.get("dependsOn")
    if isinstance(deps, list):
        options = {**options, "dependsOn": [str(ids[d[1:]]) if str(d).startswith("@") else d
                                            for d in deps]}  # fmt: skip
    return options


def via_python(app: App, type_: str, payload: Any, options: dict[str, Any]) -> UUID:
    rest = dict(options)
    queue = rest.pop("queue", None)
    extra = {} if queue is None else {"queue": queue}
    return app.create_sync(type_, payload, **extra, **keyword_options(rest)).id


def via_sql(conn: Conn, type_: str, payload: Any, options: dict[str, Any]) -> UUID:
    row = conn.execute(
        "SELECT id FROM pgjobs_enqueue(%s, %s::jsonb, %s::jsonb)",
        (type_, json.dumps(payload), json.dumps(options)),
    ).fetchone()
    assert row is not None
    return UUID(str(row["id"]))


def outcome(case: Case, conn: Conn, create: Any) -> dict[str, Any]:
    """What a case gives on one side: the stored row's compared columns, or the error."""
    ids: dict[str, UUID] = {}
    for name, options in case.get("setup", []):
        ids[name] = create(case["type"], {}, options)
    if "finish" in case:
        conn.execute("UPDATE jobs SET status = 'completed', completed_at = now() WHERE id = %s",
                     (ids[case["finish"]],))  # fmt: skip
    names = {str(v): k for k, v in ids.items()}
    try:
        job_id = create(case["type"], case["payload"], resolve(case["options"], ids))
    except (PgJobsError, psycopg.Error) as exc:
        message = exc.diag.message_primary if isinstance(exc, psycopg.Error) else str(exc)
        for job, name in names.items():
            message = (message or "").replace(job, "{" + name + "}")
        sqlstate = exc.sqlstate if isinstance(exc, psycopg.Error) else None
        return {"error": message, "sqlstate": sqlstate}
    row = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    stored = {c: row[c] for c in COMPARED}
    stored["depends_on"] = [names.get(str(d), str(d)) for d in row["depends_on"] or []]
    stored["id"] = names.get(str(job_id), "new")
    stored["finished"] = row["completed_at"] is not None
    if "runAt" in case["options"] or "run_at" in case["options"]:
        stored["run_at"] = row["run_at"].isoformat()
    else:
        stored["run_in_ms"] = round((row["run_at"] - row["created_at"]).total_seconds() * 1000)
    return stored


def test_shared_cases_give_the_same_rows_and_errors(db_url: str, second_db_url: str) -> None:
    settings = make_settings(db_url, **SETTINGS)
    app = App(settings)
    with connect(db_url) as py_conn, connect(second_db_url) as sql_conn:
        record_settings(sql_conn, settings)  # what `pgjobs init` does
        seed_parents(py_conn)
        seed_parents(sql_conn)
        mismatches = []
        try:
            for case in CASES:
                python = outcome(case, py_conn, lambda t, p, o: via_python(app, t, p, o))
                sql = outcome(case, sql_conn, lambda t, p, o: via_sql(sql_conn, t, p, o))
                expected_state = case.get("sqlstate", "22023") if "error" in case else None
                # Python errors carry no SQLSTATE; the SQL one is checked on its own.
                python_view = (
                    {**python, "sqlstate": sql["sqlstate"]} if "error" in python else python
                )
                if python_view != sql or sql.get("sqlstate") != expected_state:
                    mismatches.append((case["name"], python, sql))
                elif "error" in case and python["error"] != case["error"]:
                    mismatches.append((case["name"], python["error"], case["error"]))
        finally:
            app.close_sync()
    assert mismatches == [], "\n".join(map(str, mismatches))


def test_settings_defaults_reach_the_sql_functions(db: Conn, db_url: str) -> None:
    row = db.execute("SELECT * FROM pgjobs_enqueue('t', '{}')").fetchone()
    assert row is not None and (row["max_attempts"], row["timeout_ms"]) == (3, 60000)
    record_settings(db, make_settings(db_url, JOBS_RETRY_ATTEMPTS="9", JOBS_JOB_TIMEOUT="1234"))
    row = db.execute("SELECT * FROM pgjobs_enqueue('t', '{}')").fetchone()
    assert row is not None and (row["max_attempts"], row["timeout_ms"]) == (9, 1234)


# ------------------------------------------------------------------ enqueue_many


def test_enqueue_many_matches_create_many(db_url: str, second_db_url: str) -> None:
    batch: list[dict[str, Any]] = [
        {"type": "a", "payload": {"i": 1}},
        {"type": "b", "queue": "low-priority", "options": {"priority": "low", "delay": 500}},
        {"type": "c", "options": {"uniqueKey": "u"}},
        {"type": "d", "options": {"uniqueKey": "u"}},  # answered by the job before
        {"type": "e", "payload": None, "queue": None, "options": None},
    ]
    app = App(make_settings(db_url))
    try:
        py_ids = app.create_many_sync(batch)
    finally:
        app.close_sync()
    with connect(db_url) as py_conn, connect(second_db_url) as sql_conn:
        sql_rows = sql_conn.execute(
            "SELECT * FROM pgjobs_enqueue_many(%s::jsonb)", (json.dumps(batch),)
        ).fetchall()
        py_rows = [
            py_conn.execute("SELECT * FROM jobs WHERE id = %s", (i,)).fetchone() for i in py_ids
        ]
    keep = ("type", "queue", "status", "priority", "payload", "max_attempts", "unique_key")
    assert [{c: r[c] for c in keep} for r in sql_rows] == [
        {c: r[c] for c in keep} for r in py_rows if r is not None
    ]
    assert sql_rows[3]["id"] == sql_rows[2]["id"]
    assert [r["status"] for r in sql_rows] == [
        "pending",
        "delayed",
        "pending",
        "pending",
        "pending",
    ]


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([{"type": "a"}, {"type": "b", "options": {"delay": -1}}],
         "job 1: delay must be a non-negative number of milliseconds (got -1)"),
        ([{"type": "a", "priority": 1}], "job 0: unknown field 'priority'"),
        ([{"queue": "default"}], "job 0: missing field 'type'"),
        (["a"], "job 0: a job must be a JSON object with at least a 'type'"),
        ([{"type": "a", "options": []}], "job 0: options must be a JSON object"),
        ([{"type": "a", "options": {"queue": "x"}}], "job 0: unknown option 'queue'"),
    ],
)  # fmt: skip
def test_enqueue_many_refuses_a_bad_job_and_stores_nothing(
    db: Conn, db_url: str, batch: list[Any], message: str
) -> None:
    app = App(make_settings(db_url))
    try:
        with pytest.raises(pgjobs.ValidationError) as python:
            app.create_many_sync(batch)
    finally:
        app.close_sync()
    with pytest.raises(psycopg.errors.InvalidParameterValue) as sql:
        db.execute("SELECT * FROM pgjobs_enqueue_many(%s::jsonb)", (json.dumps(batch),))
    assert sql.value.diag.message_primary == str(python.value) == message
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone() == {"n": 0}


def test_enqueue_many_in_one_statement(db: Conn) -> None:
    # 50,000 are measured by bench/sql_api.py; the statement is the same.
    count = 5000
    rows = db.execute(
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, min(status) AS status "
        "FROM pgjobs_enqueue_many((SELECT jsonb_agg(jsonb_build_object("
        "'type', 'bulk', 'payload', jsonb_build_object('i', i))) "
        "FROM generate_series(1, %s) AS i))",
        (count,),
    ).fetchone()
    assert rows == {"n": count, "ids": count, "status": "pending"}


def test_enqueue_many_with_dependencies(db: Conn) -> None:
    seed_parents(db)
    batch = [
        {"type": "a", "options": {"dependsOn": [PARENT_DONE]}},
        {"type": "b", "options": {"dependsOn": PARENT_FAILED}},
    ]
    rows = db.execute(
        "SELECT type, status FROM pgjobs_enqueue_many(%s::jsonb)", (json.dumps(batch),)
    ).fetchall()
    assert rows == [{"type": "a", "status": "pending"}, {"type": "b", "status": "failed"}]


# ------------------------------------------------------------------ trigger recipe

TRIGGER = """
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL);
CREATE FUNCTION orders_send_email() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgjobs_enqueue('send-email',
                           jsonb_build_object('to', NEW.email, 'order', NEW.id),
                           '{"queue": "emails", "uniqueKey": null}');
    RETURN NEW;
END $$;
CREATE TRIGGER orders_send_email AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_send_email();
"""


@pytest.mark.anyio
async def test_trigger_enqueues_in_the_same_transaction(db_url: str, db: Conn) -> None:
    db.execute(TRIGGER)
    # A 5 s poll: a job started well within it was woken by LISTEN/NOTIFY at commit.
    app = App(make_settings(db_url, JOBS_POLL_INTERVAL="5000"))
    started: dict[str, Any] = {}

    @app.handler("send-email")
    async def send(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> None:
        started.setdefault("at", time.monotonic())
        started["payload"] = payload

    try:
        async with app.worker(["emails"]) as worker:
            await worker.wait_listening()
            with connect(db_url) as conn:
                with pytest.raises(RuntimeError), conn.transaction():
                    conn.execute("INSERT INTO orders (email) VALUES ('rolled@back.example')")
                    raise RuntimeError("roll back")
                assert conn.execute("SELECT count(*) AS n FROM jobs").fetchone() == {"n": 0}
                with conn.transaction():
                    conn.execute("INSERT INTO orders (email) VALUES ('a@b.example')")
                committed = time.monotonic()

            async def ran() -> bool:
                return "at" in started

            await wait_until_async(ran, timeout=5)
            latency = started["at"] - committed
            print(f"trigger commit -> handler start: {latency * 1000:.1f} ms")
            assert latency < 1.0
            assert started["payload"]["to"] == "a@b.example"
    finally:
        await app.close()


# ------------------------------------------------------------------ producer role


def test_producer_role_can_enqueue_but_not_read_jobs(db_url: str, db: Conn) -> None:
    db.execute("INSERT INTO jobs (type, payload) VALUES ('secret', '{\"token\": \"x\"}')")
    with connect(db_url) as conn:
        conn.execute("SET ROLE pgjobs_producer")
        row = conn.execute(
            "SELECT id, status FROM pgjobs_enqueue('hello', %s, %s)",
            ('{"a": 1}', '{"priority": "high"}'),
        ).fetchone()
        assert row is not None and row["status"] == "pending"
        many = conn.execute(
            'SELECT count(*) AS n FROM pgjobs_enqueue_many(\'[{"type": "x"}, {"type": "y"}]\')'
        ).fetchone()
        assert many == {"n": 2}
        for statement in (
            "SELECT * FROM jobs",
            "SELECT payload FROM jobs LIMIT 1",
            "UPDATE jobs SET priority = 1",
            "INSERT INTO jobs (type) VALUES ('direct')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        for call in (
            "SELECT * FROM pgjobs_cancel(%s)",
            "SELECT * FROM pgjobs_retry(%s)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(call, (row["id"],))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM pgjobs_pause('default')")
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone() == {"n": 4}


def test_functions_are_not_executable_by_public(db: Conn) -> None:
    rows = db.execute(
        "SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public, "
        "p.prosecdef, p.proconfig FROM pg_proc p WHERE p.proname IN ('pgjobs_enqueue', "
        "'pgjobs_enqueue_many', 'pgjobs_cancel', 'pgjobs_retry', 'pgjobs_pause', "
        "'pgjobs_resume') ORDER BY 1"
    ).fetchall()
    assert len(rows) == 6
    for row in rows:
        assert row["public"] is False and row["prosecdef"] is True, row
        assert row["proconfig"] == ["search_path=pg_catalog, public, pg_temp"], row


# ------------------------------------------------------------------ cancel, retry, pause


def sql_error(db: Conn, statement: str, *args: Any) -> tuple[str | None, str | None]:
    with pytest.raises(psycopg.Error) as exc:
        db.execute(statement, args)
    return exc.value.sqlstate, exc.value.diag.message_primary


def test_cancel_and_retry_behave_like_the_python_api(sync_app: App, db: Conn) -> None:
    seed_parents(db)
    job = sync_app.create_sync("t", {})
    child = sync_app.create_sync("c", {}, depends_on=[job.id])
    assert child.status == "blocked"
    # cancel: pending -> cancelled, and the child waiting on it is settled (policy fail)
    row = db.execute("SELECT * FROM pgjobs_cancel(%s)", (job.id,)).fetchone()
    assert row is not None and row["status"] == "cancelled" and row["completed_at"]
    assert sync_app.get_sync(child.id).status == "cancelled"
    with pytest.raises(pgjobs.errors.Conflict) as python:
        sync_app.cancel_sync(job.id)
    assert sql_error(db, "SELECT * FROM pgjobs_cancel(%s)", job.id) == ("55000", str(python.value))
    # retry: cancelled -> pending with a fresh budget, like App.retry
    row = db.execute("SELECT * FROM pgjobs_retry(%s)", (job.id,)).fetchone()
    assert row is not None
    assert (row["status"], row["max_attempts"], row["attempt_budget"]) == ("pending", 3, 3)
    with pytest.raises(pgjobs.errors.Conflict) as python:
        sync_app.retry_sync(job.id)
    assert sql_error(db, "SELECT * FROM pgjobs_retry(%s)", job.id) == ("55000", str(python.value))
    # a job with dependencies is settled at once: its parent is pending again
    row = db.execute("SELECT * FROM pgjobs_retry(%s)", (child.id,)).fetchone()
    assert row is not None and row["status"] == "blocked"
    # an active job is only flagged
    db.execute("UPDATE jobs SET status = 'active', attempts = 1 WHERE id = %s", (job.id,))
    row = db.execute("SELECT * FROM pgjobs_cancel(%s)", (job.id,)).fetchone()
    assert row is not None and row["status"] == "active" and row["cancel_requested_at"]
    # unknown ids
    missing = "018f0000-0000-7000-8000-00000000abcd"
    with pytest.raises(pgjobs.errors.JobNotFound) as python:
        sync_app.cancel_sync(missing)
    assert sql_error(db, "SELECT * FROM pgjobs_cancel(%s)", missing) == ("P0002", str(python.value))
    assert sql_error(db, "SELECT * FROM pgjobs_retry(%s)", missing) == ("P0002", str(python.value))


@pytest.mark.anyio
async def test_pause_and_resume_behave_like_the_ops_service(app: App, db: Conn) -> None:
    from pgjobs.ops import Ops

    ops = Ops(app)
    row = db.execute("SELECT * FROM pgjobs_pause('default')").fetchone()
    assert row is not None and row["paused"] is True and row["paused_at"] is not None
    again = db.execute("SELECT * FROM pgjobs_pause('default')").fetchone()
    assert again is not None and again["paused_at"] == row["paused_at"]
    row = db.execute("SELECT * FROM pgjobs_resume('default')").fetchone()
    assert row is not None and (row["paused"], row["paused_at"]) == (False, None)
    audit = db.execute("SELECT actor, action, target FROM job_audit ORDER BY id").fetchall()
    assert [(a["action"], a["target"]) for a in audit] == [
        ("pause", "default"),
        ("pause", "default"),
        ("resume", "default"),
    ]
    assert audit[0]["actor"] == "sql:postgres"
    for name in ("nope", "Bad Name"):
        with pytest.raises(PgJobsError) as python:
            await ops.pause(name, actor="test")
        state, message = sql_error(db, "SELECT * FROM pgjobs_pause(%s)", name)
        assert message == str(python.value)
        assert state == ("P0002" if name == "nope" else "22023")


def test_resume_wakes_workers_at_commit(db_url: str, db: Conn) -> None:
    db.execute("SELECT * FROM pgjobs_pause('default')")
    with connect(db_url) as listener:
        listener.execute("LISTEN pgjobs_jobs")
        with connect(db_url) as conn, conn.transaction():
            conn.execute("SELECT * FROM pgjobs_resume('default')")
            assert list(listener.notifies(timeout=0.2, stop_after=1)) == []
        [note] = list(listener.notifies(timeout=5, stop_after=1))
        assert note.payload == "default"
