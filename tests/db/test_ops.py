"""The operations module against a real database: stats, listings, retry, clean,
pause/resume, delete, promote, workers, database health."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from pgjobs.app import App
from pgjobs.errors import Conflict, JobNotFound, NotFound, ValidationError
from pgjobs.ops import JobFilter, Ops, health_score, parse_duration_ms, service
from tests.opsdata import insert_job, snapshot, status_of

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[Any]


@pytest.fixture
def ops(app: App) -> Ops:
    return Ops(app)


def test_health_score_follows_the_spec_formula() -> None:
    assert health_score(waiting=0, active=0, failed=0) == 100
    assert health_score(waiting=600, active=5, failed=0) == 85
    assert health_score(waiting=900, active=5, failed=0) == 70
    assert health_score(waiting=10, active=0, failed=0) == 60  # stalled processing
    assert health_score(waiting=80, active=5, failed=15) == 80  # 15 % failed
    assert health_score(waiting=50, active=0, failed=50) == 10  # 50 % failed and stalled
    assert health_score(waiting=900, active=0, failed=900) == 0


def test_durations() -> None:
    assert parse_duration_ms("7d") == 7 * 86_400_000
    assert parse_duration_ms("1h30m") == 5_400_000
    assert parse_duration_ms("500ms") == 500
    assert parse_duration_ms("86400000") == 86_400_000
    for bad in ("", "7x", "d7", "1h 30", "-5m"):
        with pytest.raises(ValidationError):
            parse_duration_ms(bad)


async def test_stats_counts_window_and_health(ops: Ops, db: Conn) -> None:
    for _ in range(3):
        insert_job(db, status="pending")
    insert_job(db, status="active")
    insert_job(db, status="completed", duration_ms=100)
    insert_job(db, status="completed", duration_ms=300, finished_ago=timedelta(hours=30))
    insert_job(db, status="failed", queue="emails")
    insert_job(db, status="delayed", queue="emails")
    report = await ops.stats(hours=24, performance=True)
    by_name = {q.name: q for q in report.queues}
    assert set(by_name) >= {"default", "high-priority", "low-priority", "emails"}
    default = by_name["default"]
    assert (default.waiting, default.active, default.completed) == (3, 1, 2)
    assert default.window.completed == 1  # the other finished 30 h ago
    assert by_name["emails"].window.failure_rate == 1.0
    assert by_name["emails"].health_score == 100 - 20 - 30
    assert by_name["low-priority"].total == 0
    assert report.totals()["waiting"] == 3
    assert report.performance is not None
    default_perf = [p for p in report.performance if p.queue == "default" and p.type is None]
    assert default_perf[0].runs == 1 and default_perf[0].p50_ms == 100
    wide = await ops.stats(hours=48)
    assert {q.name: q for q in wide.queues}["default"].window.completed == 2
    only = await ops.stats(queue="emails")
    assert [q.name for q in only.queues] == ["emails"]
    with pytest.raises(NotFound):
        await ops.stats(queue="nope")
    with pytest.raises(ValidationError):
        await ops.stats(hours=0)


async def test_paused_queue_counts_waiting_as_paused(ops: Ops, db: Conn) -> None:
    insert_job(db, status="pending", queue="default")
    await ops.pause("default", actor="test")
    queue = {q.name: q for q in await ops.queues()}["default"]
    assert (queue.is_paused, queue.waiting, queue.paused) == (True, 0, 1)
    state = await ops.resume("default", actor="test")
    assert state.paused is False
    queue = {q.name: q for q in await ops.queues()}["default"]
    assert (queue.is_paused, queue.waiting, queue.paused) == (False, 1, 0)
    audit = await ops.audit_log()
    assert [a.action for a in audit][:2] == ["resume", "pause"]


async def test_pause_unknown_queue_is_not_found_and_changes_nothing(ops: Ops, db: Conn) -> None:
    before = snapshot(db)
    with pytest.raises(NotFound):
        await ops.pause("ghost", actor="test")
    with pytest.raises(ValidationError):
        await ops.pause("Bad Name", actor="test")
    assert snapshot(db) == before
    insert_job(db, queue="adhoc")
    assert (await ops.pause("adhoc", actor="test")).paused


async def test_list_jobs_filters_and_pages(ops: Ops, db: Conn) -> None:
    ids = [
        insert_job(db, type="a" if i % 2 else "b", created_ago=timedelta(minutes=i))
        for i in range(7)
    ]
    insert_job(db, status="failed", queue="other")
    page = await ops.list_jobs(JobFilter.build(type="a"), limit=2)
    assert [j.id for j in page.jobs] == [ids[1], ids[3]]
    rest = await ops.list_jobs(JobFilter.build(type="a"), limit=2, cursor=page.next_cursor)
    assert [j.id for j in rest.jobs] == [ids[5]] and rest.next_cursor is None
    failed = await ops.list_jobs(JobFilter.build(status="failed"))
    assert [j.queue for j in failed.jobs] == ["other"]
    waiting = await ops.list_jobs(JobFilter.build(status="waiting", queue="default"))
    assert len(waiting.jobs) == 7
    recent = await ops.list_jobs(
        JobFilter.build(created_after=(await ops.get_job(ids[2])).created_at)
    )
    assert {j.id for j in recent.jobs} >= {ids[0], ids[1], ids[2]}
    assert ids[3] not in {j.id for j in recent.jobs}
    by_prefix = await ops.list_jobs(JobFilter.build(id_prefix=str(ids[4])[:30]))
    assert [j.id for j in by_prefix.jobs] == [ids[4]]
    assert (await ops.list_jobs(limit=10_000)).limit == 500
    assert (await ops.list_jobs(limit=0)).limit == 1
    for bad in ({"status": "bogus"}, {"created_after": "yesterday"}, {"id_prefix": "xyz"}):
        with pytest.raises(ValidationError):
            JobFilter.build(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await ops.list_jobs(cursor="not-a-cursor")


async def test_pagination_is_stable_under_concurrent_inserts(ops: Ops, app: App) -> None:
    existing = set(await app.create_many([{"type": "t", "payload": {"i": i}} for i in range(120)]))
    stop = asyncio.Event()

    async def keep_inserting() -> int:
        n = 0
        while not stop.is_set():
            await app.create("t", {"late": n})
            n += 1
            await asyncio.sleep(0)
        return n

    inserter = asyncio.create_task(keep_inserting())
    seen: list[Any] = []
    cursor = None
    try:
        while True:
            page = await ops.list_jobs(limit=7, cursor=cursor)
            seen.extend(j.id for j in page.jobs)
            await asyncio.sleep(0.005)  # let inserts interleave with paging
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    finally:
        stop.set()
        inserted_meanwhile = await inserter
    assert inserted_meanwhile > 0
    assert len(seen) == len(set(seen)), "a row was listed twice"
    assert existing <= set(seen), "a row that existed before paging was skipped"


async def test_retry_show_changes_nothing_then_retry_bulk(ops: Ops, db: Conn) -> None:
    failed = [
        insert_job(db, status="failed", type="send-email", last_error=f"e{i}") for i in range(12)
    ]
    other = insert_job(db, status="failed", type="resize", queue="images")
    before = snapshot(db)
    shown = await ops.retry(show=True, actor="test")
    assert shown.count == 10 and not shown.retried
    assert snapshot(db) == before
    assert await ops.audit_log() == ()
    by_type = await ops.retry(type="resize", actor="test")
    assert [j.id for j in by_type.jobs] == [other]
    assert status_of(db, other) == "pending"
    bulk = await ops.retry(queue="default", limit=20, actor="test")
    assert {j.id for j in bulk.jobs} == set(failed)
    row = db.execute(
        "SELECT max_attempts, attempts FROM jobs WHERE id = %s", (failed[0],)
    ).fetchone()
    assert row == {"max_attempts": 3, "attempts": 0}  # a fresh budget of 3 tries
    assert (await ops.retry(actor="test")).count == 0


async def test_retry_by_error_fingerprint(ops: Ops, db: Conn) -> None:
    a = insert_job(db, status="failed", last_error="timeout talking to smtp\nline 2")
    b = insert_job(db, status="failed", last_error="bad address")
    groups = await ops.failure_groups()
    assert {(g.error_line, g.jobs) for g in groups} == {
        ("timeout talking to smtp", 1),
        ("bad address", 1),
    }
    report = await ops.retry(error_line="timeout talking to smtp", actor="test")
    assert [j.id for j in report.jobs] == [a]
    assert status_of(db, b) == "failed"


async def test_clean_dry_run_then_batches(ops: Ops, db: Conn) -> None:
    old_done = [
        insert_job(db, status="completed", finished_ago=timedelta(days=2)) for _ in range(5)
    ]
    fresh = insert_job(db, status="completed", finished_ago=timedelta(minutes=5))
    old_failed = insert_job(db, status="failed", finished_ago=timedelta(days=10))
    kept_failed = insert_job(db, status="failed", finished_ago=timedelta(days=2))
    parent = insert_job(db, status="completed", finished_ago=timedelta(days=3))
    insert_job(db, status="blocked", depends_on=[parent])
    before = snapshot(db)
    dry = await ops.clean(
        completed_older_than_ms=parse_duration_ms("1d"),
        failed_older_than_ms=parse_duration_ms("7d"),
        dry_run=True,
        actor="test",
    )
    assert (dry.completed, dry.failed, dry.dry_run) == (5, 1, True)
    assert snapshot(db) == before
    done = await ops.clean(
        completed_older_than_ms=86_400_000,
        failed_older_than_ms=7 * 86_400_000,
        batch_size=2,
        actor="test",
    )
    assert (done.completed, done.failed, done.batches) == (5, 1, 4)
    assert all(status_of(db, i) is None for i in [*old_done, old_failed])
    assert status_of(db, fresh) == "completed"
    assert status_of(db, kept_failed) == "failed"
    assert status_of(db, parent) == "completed"  # a blocked job still waits on it
    leftovers = db.execute(
        "SELECT count(*) AS n FROM job_results WHERE job_id = ANY(%s)", (old_done,)
    )
    assert leftovers.fetchone() == {"n": 0}


def clean_rows(db: Conn) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT actor, target, detail FROM job_audit WHERE action = 'clean' ORDER BY id"
    ).fetchall()


async def test_clean_queue_writes_a_row_per_batch(
    ops: Ops, db: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "CLEAN_BATCH", 3)
    done = [insert_job(db, status="completed") for _ in range(7)]
    other = insert_job(db, status="completed", queue="emails")
    assert await ops.clean_queue("default", actor="test") == 7
    rows = clean_rows(db)
    assert [r["detail"]["count"] for r in rows] == [3, 3, 1]
    assert {(r["actor"], r["target"]) for r in rows} == {("test", "default")}
    recorded = [job for r in rows for job in r["detail"]["jobs"]]
    assert sorted(recorded) == sorted(str(i) for i in done)
    assert all(status_of(db, i) is None for i in done) and status_of(db, other) == "completed"


async def test_clean_queue_failing_midway_leaves_its_deletions_audited(ops: Ops, db: Conn) -> None:
    # Batches go in id order: the last job is in the second batch, and cannot be deleted.
    *first, stuck = sorted(insert_job(db, status="completed") for _ in range(3))
    db.execute("UPDATE jobs SET type = 'stuck' WHERE id = %s", (stuck,))
    db.execute(
        "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused'; END $$"
    )
    db.execute(
        "CREATE TRIGGER refuse BEFORE DELETE ON jobs FOR EACH ROW "
        "WHEN (OLD.type = 'stuck') EXECUTE FUNCTION refuse_delete()"
    )
    with pytest.raises(psycopg.errors.RaiseException):
        await ops.clean_queue("default", batch_size=2, actor="test")
    # The first batch committed, and so did its row; the failed one changed nothing.
    assert [status_of(db, i) for i in [*first, stuck]] == [None, None, "completed"]
    [row] = clean_rows(db)
    assert row["detail"]["count"] == 2
    assert sorted(row["detail"]["jobs"]) == sorted(str(i) for i in first)


async def test_cancel_retry_delete_single_jobs(ops: Ops, app: App, db: Conn) -> None:
    job = await app.create("t", {})
    cancelled = await ops.cancel_job(job.id, actor="test")
    assert cancelled.status == "cancelled"
    with pytest.raises(Conflict):
        await ops.cancel_job(job.id, actor="test")
    assert (await ops.retry_job(job.id, actor="test")).status == "pending"
    running = insert_job(db, status="active")
    with pytest.raises(Conflict):
        await ops.delete_job(running, actor="test")
    await ops.delete_job(job.id, actor="test")
    assert status_of(db, job.id) is None
    with pytest.raises(JobNotFound):
        await ops.delete_job(job.id, actor="test")
    with pytest.raises(ValidationError):
        await ops.delete_job("not-a-uuid", actor="test")
    actions = [a.action for a in await ops.audit_log()]
    assert actions == ["delete", "retry", "cancel"]


async def test_promote_delayed(ops: Ops, app: App, db: Conn) -> None:
    later = await app.create("t", {}, delay=3_600_000)
    assert later.status == "delayed"
    assert await ops.promote(ids=[later.id], actor="test") == [later.id]
    assert status_of(db, later.id) == "pending"


async def test_workers_and_database_health(ops: Ops, db: Conn) -> None:
    db.execute(
        "INSERT INTO job_workers (id, hostname, pid, queues, concurrency, version, in_flight,"
        " processed) VALUES (gen_random_uuid(), 'host-a', 42, ARRAY['default'], 5, '0.1.0', 2, 9),"
        " (gen_random_uuid(), 'host-b', 43, ARRAY['x'], 1, '0.1.0', 0, 0)"
    )
    db.execute(
        "UPDATE job_workers SET last_heartbeat_at = now() - interval '1 hour' WHERE pid = 43"
    )
    workers = await ops.workers()
    assert [(w.hostname, w.alive, w.in_flight, w.queues) for w in workers] == [
        ("host-a", True, 2, ("default",)),
        ("host-b", False, 0, ("x",)),
    ]
    assert (await ops.stats()).workers == 1
    health = await ops.database_health()
    assert health.dead_tuples >= 0 and health.jobs_total_bytes > 0


async def test_throughput_series(ops: Ops, db: Conn) -> None:
    insert_job(db, status="completed", finished_ago=timedelta(minutes=5))
    insert_job(db, status="failed", finished_ago=timedelta(minutes=45))
    insert_job(db, status="completed", finished_ago=timedelta(hours=3))
    points = await ops.throughput(hours=1, buckets=6)
    assert len(points) == 6
    assert sum(p.completed for p in points) == 1 and sum(p.failed for p in points) == 1
    assert points[-1].completed == 1 and points[1].failed == 1


async def test_deleting_a_job_another_table_references_is_a_conflict(
    ops: Ops, app: App, db: Conn
) -> None:
    job = await app.create("noop", {})
    db.execute(
        "UPDATE jobs SET status = 'completed', completed_at = now() WHERE id = %s", (job.id,)
    )
    db.execute("CREATE TABLE invoice_runs (job_id uuid REFERENCES jobs (id))")
    db.execute("INSERT INTO invoice_runs VALUES (%s)", (job.id,))
    with pytest.raises(Conflict, match="still referenced by invoice_runs"):
        await ops.delete_job(job.id, actor="test")
    assert (await app.get(job.id)).status == "completed"
    assert db.execute("SELECT count(*) AS n FROM job_audit").fetchone()["n"] == 0
