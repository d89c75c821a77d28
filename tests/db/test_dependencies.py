"""Job dependencies: a blocked job is settled in the same transaction as its last
dependency's outcome, race-free between concurrent transactions; failure policies
(fail, ignore, cancel) and their propagation down chains; cancelling and retrying;
the maintenance safety net."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import pgjobs
from pgjobs.app import App
from pgjobs.clock import Clock
from pgjobs.engine.completer import Completer, Outcome, OutcomeKind
from pgjobs.engine.maintenance.tasks import Pruner, Rescuer, run_round
from pgjobs.errors import ValidationError
from pgjobs.ids import uuid7
from pgjobs.producer.dependencies import DependencySweeper
from pgjobs.queries import query
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[Any]


def status(db: Conn, job_id: Any) -> str:
    row = db.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row["status"])


def statuses(db: Conn, *ids: Any) -> list[str]:
    return [status(db, i) for i in ids]


def make_active(db: Conn, *ids: Any) -> None:
    """Put jobs in the state a worker's claim leaves them in (run token attempt 1)."""
    db.execute(
        "UPDATE jobs SET status = 'active', attempts = 1, started_at = now() WHERE id = ANY(%s)",
        (list(ids),),
    )


def finish(conn: Conn, job_id: Any, outcome: OutcomeKind = "completed", result: Any = None) -> None:
    """Record a run's outcome with the worker's own statement and parameters."""
    recorder = Completer(None, Clock(), uuid7())  # type: ignore[arg-type]  # only builds params
    message = "boom" if outcome == "failed" else None
    done = Outcome(job_id, 1, outcome, json.dumps(result), 1, message)
    conn.execute(query("finish_runs"), recorder.params([done])).fetchall()


@pytest.fixture
def tx(db_url: str) -> Iterator[Callable[[], Conn]]:
    """Connections that run in explicit transactions (not autocommit)."""
    opened: list[Conn] = []

    def connect() -> Conn:
        conn = psycopg.connect(db_url, row_factory=dict_row)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def waiting_on_lock(db: Conn, conn: Conn) -> bool:
    row = db.execute(
        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (conn.info.backend_pid,)
    ).fetchone()
    return row is not None and row["wait_event_type"] == "Lock"


class Background:
    """Runs a blocking call in a thread; `result()` re-raises its error."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(func,), daemon=True)
        self._thread.start()

    def _run(self, func: Callable[[], Any]) -> None:
        try:
            self._value = func()
        except BaseException as exc:
            self._error = exc

    def result(self, timeout: float = 10) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the background call did not finish"
        if self._error is not None:
            raise self._error
        return self._value


# ------------------------------------------------------------------ settling


async def test_child_is_released_in_the_transaction_that_completes_its_parent(
    app: App, db: Conn, tx: Callable[[], Conn]
) -> None:
    parent = await app.create("extract")
    child = await app.create("load", depends_on=parent.id)
    assert child.status == "blocked"
    make_active(db, parent.id)
    conn = tx()
    finish(conn, parent.id)
    # Inside the completing transaction the child already runs; outside, nothing moved.
    assert status(conn, child.id) == "pending"
    assert statuses(db, parent.id, child.id) == ["active", "blocked"]
    conn.commit()
    assert statuses(db, parent.id, child.id) == ["completed", "pending"]


@pytest.mark.parametrize("first", ["p", "q"])
async def test_two_parents_completing_in_concurrent_transactions(
    app: App, db: Conn, tx: Callable[[], Conn], first: str
) -> None:
    """Each transaction sees the other parent unfinished when it starts; the child row
    lock and the fresh read after it make the second one release the child."""
    p = await app.create("p")
    q = await app.create("q")
    child = await app.create("merge", depends_on=[p.id, q.id])
    make_active(db, p.id, q.id)
    one, two = (p.id, q.id) if first == "p" else (q.id, p.id)
    a, b = tx(), tx()
    b.execute("SELECT 1").fetchall()  # b's transaction (and snapshot era) starts first
    finish(a, one)
    blocked = Background(lambda: finish(b, two))
    wait_until(lambda: waiting_on_lock(db, b), message="the second finish to wait")
    a.commit()
    blocked.result()
    assert status(b, child.id) == "pending"
    b.commit()
    assert statuses(db, p.id, q.id, child.id) == ["completed", "completed", "pending"]


async def test_child_created_while_its_parent_completes_waits_for_the_outcome(
    app: App, db: Conn, tx: Callable[[], Conn]
) -> None:
    parent = await app.create("extract")
    make_active(db, parent.id)
    finishing = tx()
    finish(finishing, parent.id)
    creating = Background(lambda: app.create_sync("load", depends_on=parent.id))
    wait_until(
        lambda: (
            db.execute(
                "SELECT count(*) AS n FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()["n"]
            == 1
        ),
        message="the create to wait for the parent",
    )
    finishing.commit()
    child = creating.result()
    assert child.status == "pending"


async def test_parent_completing_while_a_child_is_created_sees_the_child(
    app: App, db: Conn, tx: Callable[[], Conn]
) -> None:
    parent = await app.create("extract")
    make_active(db, parent.id)
    creating = tx()
    child = app.create_sync("load", depends_on=parent.id, conn=creating)
    assert child.status == "blocked"
    finishing = tx()
    done = Background(lambda: finish(finishing, parent.id))
    wait_until(lambda: waiting_on_lock(db, finishing), message="the finish to wait")
    creating.commit()
    done.result()
    finishing.commit()
    assert statuses(db, parent.id, child.id) == ["completed", "pending"]


async def test_many_children_of_many_parents_released_by_concurrent_workers(
    app: App, db: Conn
) -> None:
    """300 children, each waiting on two of 40 parents, completed by three workers at
    once without the maintenance safety net: none may stay blocked."""

    @app.handler("parent")
    async def parent_handler(ctx: pgjobs.JobContext, payload: Any) -> int:
        await asyncio.sleep(0.001 * (payload["n"] % 5))
        return int(payload["n"])

    @app.handler("child")
    async def child_handler(ctx: pgjobs.JobContext, payload: Any) -> dict[str, Any]:
        return await ctx.parent_results()

    rng = __import__("random").Random(5)
    parents = [app.build("parent", {"n": n}) for n in range(40)]
    children = [app.build("child", depends_on=rng.sample(parents, 2)) for _ in range(300)]
    await app.flow([*parents, *children])
    workers = [app.worker(concurrency=8, maintenance=False) for _ in range(3)]
    for worker in workers:
        await worker.start()
    try:

        def all_done() -> bool:
            row = db.execute(
                "SELECT count(*) FILTER (WHERE status = 'completed') AS done,"
                " count(*) FILTER (WHERE status = 'blocked') AS blocked FROM jobs"
            ).fetchone()
            return bool(row["done"] == 340)

        await asyncio.to_thread(wait_until, all_done, 30, 0.05, "every job to complete")
    finally:
        for worker in workers:
            await worker.stop()
    for child in children[:20]:
        assert child.depends_on is not None
        results = (await app.get(child.id)).result
        assert results == {str(p): int((await app.get(p)).result) for p in child.depends_on}


# ------------------------------------------------------------------ policies


async def failing_app(app: App) -> App:
    @app.handler("fails")
    async def fails(ctx: pgjobs.JobContext, payload: Any) -> None:
        raise RuntimeError("broken")

    @app.handler("ok")
    async def ok(ctx: pgjobs.JobContext, payload: Any) -> dict[str, Any]:
        return {"parents": await ctx.parent_results()}

    return app


async def test_fail_policy_fails_the_child_with_a_dependency_failure(app: App, db: Conn) -> None:
    await failing_app(app)
    parent = await app.create("fails", attempts=1)
    child = await app.create("ok", depends_on=parent.id)  # policy 'fail' is the default
    await app.drain()
    done = await app.get(child.id)
    assert (done.status, done.attempts) == ("failed", 0)
    assert done.last_error == f"dependency {parent.id} failed"
    assert [(f.kind, f.error_message) for f in done.failures] == [
        ("dependency", f"dependency {parent.id} failed")
    ]
    assert done.completed_at is not None


async def test_ignore_policy_runs_the_child_once_every_parent_finished(app: App) -> None:
    await failing_app(app)
    bad = await app.create("fails", attempts=1)
    good = await app.create("ok")
    child = await app.create("ok", depends_on=[bad.id, good.id], dependency_policy="ignore")
    await app.drain()
    done = await app.get(child.id)
    assert done.status == "completed"
    # The failed parent has no result; the completed one has.
    assert done.result == {"parents": {str(good.id): {"parents": {}}}}


async def test_cancel_policy_cancels_the_child(app: App) -> None:
    await failing_app(app)
    parent = await app.create("fails", attempts=1)
    child = await app.create("ok", depends_on=parent.id, dependency_policy="cancel")
    await app.drain()
    done = await app.get(child.id)
    assert (done.status, done.last_error, done.failures) == (
        "cancelled",
        f"dependency {parent.id} failed",
        (),
    )


async def test_fail_and_cancel_decide_at_once_ignore_waits(app: App, db: Conn) -> None:
    """With one parent failed and another still running, 'fail' and 'cancel' settle the
    child immediately; 'ignore' keeps waiting for the running one."""
    failed = await app.create("x")
    running = await app.create("y")
    make_active(db, failed.id, running.id)
    kids = {
        policy: await app.create("z", depends_on=[failed.id, running.id], dependency_policy=policy)
        for policy in ("fail", "cancel", "ignore")
    }
    finish(db, failed.id, "failed")
    assert [status(db, kids[p].id) for p in ("fail", "cancel", "ignore")] == [
        "failed",
        "cancelled",
        "blocked",
    ]
    finish(db, running.id)
    assert status(db, kids["ignore"].id) == "pending"


async def test_failure_propagates_down_chains_per_policy(app: App, db: Conn) -> None:
    """root fails -> a (fail) fails -> b (ignore) runs; a -> c (cancel) is cancelled ->
    d (fail) is cancelled (a cancelled parent cancels) -> e (ignore) runs."""
    await failing_app(app)
    root = app.build("fails", attempts=1)
    a = app.build("ok", depends_on=root)
    b = app.build("ok", depends_on=a, dependency_policy="ignore")
    c = app.build("ok", depends_on=a, dependency_policy="cancel")
    d = app.build("ok", depends_on=c)
    e = app.build("ok", depends_on=d, dependency_policy="ignore")
    await app.flow([root, a, b, c, d, e])
    assert statuses(db, a.id, b.id, c.id, d.id, e.id) == ["blocked"] * 5
    await app.drain()
    assert statuses(db, root.id, a.id, b.id, c.id, d.id, e.id) == [
        "failed",
        "failed",
        "completed",
        "cancelled",
        "cancelled",
        "completed",
    ]
    assert (await app.get(d.id)).last_error == f"dependency {c.id} was cancelled"


async def test_cancelling_a_parent_settles_its_blocked_children(app: App, db: Conn) -> None:
    parent = await app.create("x", delay=60_000)
    kids = {
        policy: await app.create("z", depends_on=parent.id, dependency_policy=policy)
        for policy in ("fail", "cancel", "ignore")
    }
    grandchild = await app.create("z", depends_on=kids["fail"].id)
    await app.cancel(parent.id)
    assert [status(db, kids[p].id) for p in ("fail", "cancel", "ignore")] == [
        "cancelled",
        "cancelled",
        "pending",
    ]
    assert status(db, grandchild.id) == "cancelled"
    assert (await app.get(kids["fail"].id)).last_error == f"dependency {parent.id} was cancelled"


async def test_a_new_job_of_an_already_finished_parent_is_settled_at_creation(
    app: App, db: Conn
) -> None:
    done = await app.create("x")
    failed = await app.create("x")
    cancelled = await app.create("x")
    db.execute("UPDATE jobs SET status = 'completed' WHERE id = %s", (done.id,))
    db.execute("UPDATE jobs SET status = 'failed' WHERE id = %s", (failed.id,))
    await app.cancel(cancelled.id)
    assert (await app.create("z", depends_on=done.id)).status == "pending"
    assert (await app.create("z", depends_on=done.id, delay=60_000)).status == "delayed"
    on_failed = await app.create("z", depends_on=[done.id, failed.id])
    assert (on_failed.status, on_failed.last_error) == (
        "failed",
        f"dependency {failed.id} failed",
    )
    assert [f.kind for f in (await app.get(on_failed.id)).failures] == ["dependency"]
    assert (await app.create("z", depends_on=failed.id, dependency_policy="cancel")).status == (
        "cancelled"
    )
    assert (await app.create("z", depends_on=failed.id, dependency_policy="ignore")).status == (
        "pending"
    )
    assert (await app.create("z", depends_on=cancelled.id)).status == "cancelled"
    # Within a batch, a job failed at creation fails the batch's jobs that wait on it.
    x = app.build("z", depends_on=failed.id)
    y = app.build("z", depends_on=x)
    z = app.build("z", depends_on=y, dependency_policy="ignore")
    await app.create_many([x, y, z])
    assert statuses(db, x.id, y.id, z.id) == ["failed", "failed", "pending"]


async def test_unknown_dependencies_and_cycles_are_refused(app: App, db: Conn) -> None:
    missing = uuid.uuid4()
    real = await app.create("x")
    with pytest.raises(ValidationError, match=f"dependsOn names an unknown job {missing}"):
        await app.create("z", depends_on=[real.id, missing])
    with pytest.raises(ValidationError, match=f"dependsOn names an unknown job {missing}"):
        await app.create_many([app.build("z"), app.build("z", depends_on=missing)])
    a = app.build("a")
    b = app.build("b", depends_on=a)
    looped = replace(a, depends_on=[b.id])
    with pytest.raises(ValidationError, match=f"dependsOn forms a cycle: {a.id} -> {b.id}"):
        await app.create_many([looped, b])
    selfish = replace(a, depends_on=[a.id])
    with pytest.raises(ValidationError, match="dependsOn forms a cycle"):
        await app.create_many([selfish])
    with pytest.raises(ValidationError, match="dependsOn forms a cycle: 'x' -> 'y' -> 'x'"):
        await app.flow(
            [
                {"ref": "x", "type": "t", "options": {"dependsOn": ["y"]}},
                {"ref": "y", "type": "t", "options": {"dependsOn": ["x"]}},
            ]
        )
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 1


# ------------------------------------------------------------------ retries, snoozes


async def test_retrying_a_child_waits_for_its_parents_again(app: App, db: Conn) -> None:
    calls: list[str] = []

    @app.handler("flaky-parent")
    async def flaky(ctx: pgjobs.JobContext, payload: Any) -> str:
        calls.append("parent")
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        return "fixed"

    @app.handler("child")
    async def child_handler(ctx: pgjobs.JobContext, payload: Any) -> Any:
        calls.append("child")
        return await ctx.parent_results()

    parent = await app.create("flaky-parent", attempts=1)
    child = await app.create("child", depends_on=parent.id)
    await app.drain()
    assert statuses(db, parent.id, child.id) == ["failed", "failed"]
    # Retrying the child alone: its parent still failed, so it fails again at once.
    again = await app.retry(child.id)
    assert (again.status, again.last_error) == ("failed", f"dependency {parent.id} failed")
    await app.retry(parent.id)
    assert (await app.retry(child.id)).status == "blocked"
    await app.drain()
    assert calls == ["parent", "parent", "child"]
    assert (await app.get(child.id)).result == {str(parent.id): "fixed"}


async def test_snoozing_parent_keeps_its_attempt_and_its_children_waiting(app: App) -> None:
    order: list[str] = []

    @app.handler("snoozer")
    async def snoozer(ctx: pgjobs.JobContext, payload: Any) -> str:
        order.append(f"parent attempt {ctx.attempt}")
        if len(order) < 3:
            raise pgjobs.RetryIn(0)
        return "ready"

    @app.handler("after")
    async def after(ctx: pgjobs.JobContext, payload: Any) -> Any:
        order.append("child")
        return await ctx.parent_results()

    parent = await app.create("snoozer", attempts=1)
    child = await app.create("after", depends_on=parent.id)
    await app.drain()
    assert order == ["parent attempt 1", "parent attempt 2", "parent attempt 3", "child"]
    done = await app.get(parent.id)
    assert (done.status, done.attempts, done.max_attempts, done.failures) == (
        "completed",
        3,
        3,
        (),
    )
    assert (await app.get(child.id)).result == {str(parent.id): "ready"}


async def test_complete_in_a_handlers_transaction_releases_children_with_it(
    app: App, db: Conn, db_url: str
) -> None:
    seen: list[str] = []

    @app.handler("in-tx")
    async def in_tx(ctx: pgjobs.JobContext, payload: Any) -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
            await ctx.complete_in(conn, {"stored": True})
            cur = await conn.execute("SELECT status FROM jobs WHERE id = %s", (child.id,))
            seen.append((await cur.fetchone() or ("?",))[0])

    parent = await app.create("in-tx")
    child = await app.create("later", depends_on=parent.id)
    await app.drain("default")
    assert seen == ["pending"]
    assert statuses(db, parent.id) == ["completed"]


# ------------------------------------------------------------------ safety net


async def test_rescue_that_fails_a_job_for_good_settles_its_children(app: App, db: Conn) -> None:
    parent = await app.create("x")
    child = await app.create("z", depends_on=parent.id)
    # A suspect running alone, at its last allowed stall, whose worker is gone.
    db.execute(
        "UPDATE jobs SET status = 'active', attempts = 3, worker_id = %s, suspect = true,"
        " stalled_count = 2, started_at = now() - interval '1 hour' WHERE id = %s",
        (uuid7(), parent.id),
    )
    async with await psycopg.AsyncConnection.connect(app.settings.require_database_url()) as conn:
        await run_round(conn, Rescuer(1.0, lock_ms=1000, max_stalled=2), app.clock)
    assert statuses(db, parent.id, child.id) == ["failed", "failed"]


async def test_sweeper_settles_what_was_left_blocked(app: App, db: Conn) -> None:
    done = await app.create("x")
    failed = await app.create("x")
    waiting = await app.create("x")
    a = await app.create("z", depends_on=done.id)
    b = await app.create("z", depends_on=failed.id)
    c = await app.create("z", depends_on=[done.id, waiting.id])
    # Outcomes written behind the engine's back, as a crash mid-way could leave them.
    db.execute("UPDATE jobs SET status = 'completed' WHERE id = %s", (done.id,))
    db.execute("UPDATE jobs SET status = 'failed' WHERE id = %s", (failed.id,))
    assert statuses(db, a.id, b.id, c.id) == ["blocked"] * 3
    async with await psycopg.AsyncConnection.connect(app.settings.require_database_url()) as conn:
        await run_round(conn, DependencySweeper(1.0), app.clock)
    assert statuses(db, a.id, b.id, c.id) == ["pending", "failed", "blocked"]


async def test_pruning_keeps_a_parent_that_a_blocked_job_still_waits_on(app: App, db: Conn) -> None:
    @app.handler("part")
    async def part(ctx: pgjobs.JobContext, payload: Any) -> str:
        return str(payload["name"])

    @app.handler("merge")
    async def merge(ctx: pgjobs.JobContext, payload: Any) -> Any:
        return await ctx.parent_results()

    early = await app.create("part", {"name": "early"})
    late = await app.create("part", {"name": "late"}, delay=60_000)
    child = await app.create("merge", depends_on=[early.id, late.id])
    other = await app.create("part", {"name": "other"})
    await app.drain()
    db.execute(
        "UPDATE jobs SET completed_at = now() - interval '2 days' WHERE status = 'completed'"
    )
    async with await psycopg.AsyncConnection.connect(app.settings.require_database_url()) as conn:
        await run_round(conn, Pruner(60.0, completed_ms=1000, failed_ms=1000), app.clock)
    remaining = {r["id"] for r in db.execute("SELECT id FROM jobs").fetchall()}
    assert remaining == {early.id, late.id, child.id} and other.id not in remaining
    db.execute("UPDATE jobs SET run_at = now(), status = 'pending' WHERE id = %s", (late.id,))
    await app.drain()
    assert (await app.get(child.id)).result == {str(early.id): "early", str(late.id): "late"}
