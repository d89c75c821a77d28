"""What an application embedding pgjobs calls besides create(): install() / install_sync()
(the schema, as `pgjobs init`), stats() / stats_sync() (the counts of `pgjobs stats`),
and an in-process worker's stop: `grace=`, and no signal handlers of its own."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import warnings
from typing import Any

import psycopg
import pytest

from pgjobs.app import App
from pgjobs.config import Settings
from pgjobs.db import migrations
from pgjobs.errors import NotFound, ValidationError
from tests.conftest import make_settings
from tests.helpers import wait_until_async
from tests.redis_server import shared_redis_url
from tests.webserver import run_cli

pytestmark = pytest.mark.anyio

Conn = psycopg.Connection[Any]
LATEST = len(migrations())


# ------------------------------------------------------------------ install


async def test_install_creates_the_schema_once_even_when_called_concurrently(
    empty_db_url: str,
) -> None:
    async with App(make_settings(empty_db_url)) as app:
        first, second = await asyncio.gather(app.install(), app.install())
        reports = sorted([first, second], key=lambda r: r.schema.version_before if r.schema else 0)
        created, found = (r.schema for r in reports)
        assert created is not None and found is not None
        assert (created.version_before, created.version_after) == (0, LATEST)
        assert (found.version_before, found.version_after, found.changed) == (LATEST, LATEST, False)
        assert f"schema: created (version {LATEST})" in reports[0].lines()
        again = await asyncio.to_thread(app.install_sync)
        assert again.schema is not None and not again.schema.changed
        assert f"schema: up to date (version {LATEST})" in again.lines()
        job = await app.create("t", {"n": 1})
        assert job.status == "pending"


def test_install_matches_pgjobs_init(empty_db_url: str) -> None:
    app = App(make_settings(empty_db_url))
    try:
        report = app.install_sync()
    finally:
        app.close_sync()
    assert report.schema is not None and report.schema.changed
    init = run_cli(["init"], {"DATABASE_URL": empty_db_url})
    assert init.returncode == 0, init.stderr
    assert f"schema: up to date (version {LATEST})" in init.stdout


# ------------------------------------------------------------------ stats


async def test_stats_are_the_counts_pgjobs_stats_shows(app: App, db_url: str) -> None:
    await app.create("t", {}, queue="mail")
    await app.create("t", {}, queue="mail")
    await app.create("t", {}, queue="mail", delay=60_000)
    await app.create("t", {}, queue="pgjobs_longhorizon_bench")

    report = await app.stats()
    counts = {q.name: (q.waiting, q.delayed, q.active) for q in report.queues}
    assert counts["mail"] == (2, 1, 0)
    assert counts["pgjobs_longhorizon_bench"] == (1, 0, 0)
    assert report.totals()["waiting"] == 3

    only = await app.stats(queue="mail")
    assert [(q.name, q.waiting, q.delayed) for q in only.queues] == [("mail", 2, 1)]
    synced = await asyncio.to_thread(app.stats_sync, "mail")
    assert [(q.name, q.waiting, q.delayed) for q in synced.queues] == [("mail", 2, 1)]

    cli = run_cli(["stats", "--json"], {"DATABASE_URL": db_url})
    assert cli.returncode == 0, cli.stderr
    shown = {q["name"]: (q["waiting"], q["delayed"]) for q in json.loads(cli.stdout)["queues"]}
    assert shown == {q.name: (q.waiting, q.delayed) for q in report.queues}


async def test_stats_of_a_bad_or_unknown_queue(app: App) -> None:
    with pytest.raises(NotFound):
        await app.stats(queue="nothing-here")
    with pytest.raises(ValidationError):
        await app.stats(queue="Bad Name")


def test_stats_sync_from_plain_code(sync_app: App) -> None:
    sync_app.create_sync("t", {}, queue="mail")
    report = sync_app.stats_sync("mail")
    assert [(q.name, q.waiting) for q in report.queues] == [("mail", 1)]


# ------------------------------------------------------------------ the worker's stop


def blocking_app(settings: Settings) -> tuple[App, asyncio.Event, asyncio.Event]:
    app = App(settings)
    started, release = asyncio.Event(), asyncio.Event()

    @app.handler("hold")
    async def hold(ctx: Any, payload: Any) -> str:
        started.set()
        await release.wait()
        return "finished"

    return app, started, release


async def test_grace_gives_back_a_job_still_running_when_it_ends(settings: Settings) -> None:
    app, started, _ = blocking_app(settings)
    async with app:
        job = await app.create("hold")
        worker = app.worker(["default"], grace=0.3)
        assert worker.grace == 0.3
        async with worker:
            await asyncio.wait_for(started.wait(), 20)
            began = time.monotonic()
        stopped_after = time.monotonic() - began
        assert stopped_after < 3, stopped_after
        back = await app.get(job.id)
        assert back.status == "pending", back


async def test_grace_lets_a_running_job_finish(db_url: str) -> None:
    # The setting alone would give the job back after 0.1 s.
    app, started, release = blocking_app(make_settings(db_url, JOBS_SHUTDOWN_GRACE="100"))
    async with app:
        job = await app.create("hold")
        worker = app.worker(["default"], grace=30)
        await worker.start()
        await asyncio.wait_for(started.wait(), 20)
        stopping = asyncio.create_task(worker.stop())
        done, _ = await asyncio.wait({stopping}, timeout=1.0)
        assert not done, "the stop did not wait for the running job"
        release.set()
        await asyncio.wait_for(stopping, 20)
        assert (await app.get(job.id)).status == "completed"


async def test_grace_defaults_to_the_setting(db_url: str) -> None:
    async with App(make_settings(db_url, JOBS_SHUTDOWN_GRACE="1234")) as app:
        assert app.worker(["default"]).grace == 1.234


async def test_an_in_process_worker_installs_no_signal_handlers(app: App) -> None:
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    before = {sig: signal.getsignal(sig) for sig in signals}
    ran = asyncio.Event()

    @app.handler("ping")
    async def ping(ctx: Any, payload: Any) -> None:
        ran.set()

    async with app.worker(["default"]):
        await app.create("ping")
        await wait_until_async(lambda: _is_set(ran), timeout=20, message="the job to run")
        during = {sig: signal.getsignal(sig) for sig in signals}
    assert during == before
    assert {sig: signal.getsignal(sig) for sig in signals} == before


async def _is_set(event: asyncio.Event) -> bool:
    return event.is_set()


async def test_an_app_and_its_worker_using_redis_start_and_run_without_warnings(
    db_url: str,
) -> None:
    """Every Redis client (wake-ups, events, rate limits) is built and used; a library
    warning at each start (redis-py warns when an asyncio client gets the synchronous
    Retry class) would be noise in every application's log."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = App(make_settings(db_url, JOBS_REDIS_URL=shared_redis_url()))
        ran = asyncio.Event()

        @app.handler("ping")
        async def ping(ctx: Any, payload: Any) -> None:
            await ctx.progress(50, "half")
            ran.set()

        async with app, app.worker(["default"]):
            job = await app.create("ping", rate_limit_key="k")
            await wait_until_async(lambda: _is_set(ran), timeout=20, message="the job to run")
            await app.wait(job.id, timeout=20)
        sync_app = App(make_settings(db_url, JOBS_REDIS_URL=shared_redis_url()))
        sync_app.create_sync("ping")
        sync_app.close_sync()
    assert [str(w.message) for w in caught] == []
