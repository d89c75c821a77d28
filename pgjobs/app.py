"""`pgjobs.App`: the handlers and settings of one application, and its producer API.

An App holds no global state: create as many as you like (tests do). The async
methods are the core; the `*_sync` methods are thin adapters that run the same
statements on a synchronous connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pgjobs.backoff import BackoffFunc, CustomBackoff, short_error
from pgjobs.clock import Clock
from pgjobs.config import Settings, load_settings
from pgjobs.context import Handler, HandlerSpec
from pgjobs.db import make_pool, make_sync_pool
from pgjobs.engine.worker import Worker, drain
from pgjobs.errors import ValidationError
from pgjobs.install import InitReport, initialise
from pgjobs.models import Job
from pgjobs.producer import statements as client
from pgjobs.producer.flows import (
    CreatedFlow,
    FlowItem,
    create_flow_async,
    create_flow_sync,
    plan_flow,
)
from pgjobs.producer.options import (
    NewJob,
    new_job,
    new_job_from_request,
    new_plain_job,
    validate_type,
)
from pgjobs.replica import Connect, ReadRouter, reader_of
from pgjobs.schedules import store as sched
from pgjobs.schedules.store import Schedule
from pgjobs.signals.events import EventHub, EventStream
from pgjobs.signals.redis_client import checked_url
from pgjobs.signals.wakeup import WakeupPublisher
from pgjobs.stats import StatsReport, read_stats
from pgjobs.types import register_builtin_types

__all__ = ["App", "Handler", "HandlerSpec"]

T = TypeVar("T")

log = logging.getLogger("pgjobs.app")


class App:
    """Handlers plus settings, and the way to create and steer jobs."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        database_url: str | None = None,
        clock: Clock | None = None,
        builtin_types: bool = True,
    ) -> None:
        settings = settings or load_settings()
        if database_url is not None:
            settings = settings.replace(database_url=database_url)
        if settings.redis_url is not None:
            # Settings built by hand skip load_settings' checks: refuse an unusable URL
            # here, not in the first background task that needs Redis.
            checked_url(settings.redis_url)
        self.settings = settings
        self.clock = clock or Clock()
        self.handlers: dict[str, HandlerSpec] = {}
        self._pool: AsyncConnectionPool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._sync_pool: ConnectionPool | None = None
        self._reads = ReadRouter(settings)
        self._hub: EventHub | None = None
        self._hub_loop: asyncio.AbstractEventLoop | None = None
        self._wakeups: WakeupPublisher | None = None
        self._database: str | None = None
        if builtin_types:
            register_builtin_types(self)

    # ------------------------------------------------------------ handlers

    def handler(
        self, type: str, *, backoff: BackoffFunc | None = None
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of job type `type`.

        `async def` handlers run on the worker's event loop; plain `def` handlers run
        in a thread pool. Either receives `(ctx, payload)` and returns a JSON-able result.
        `backoff(attempt, error)` (a plain, quick function) decides the delay before
        each retry of this type: seconds or a timedelta, or None for the job's own
        `backoff` option or the default.
        """

        def register(func: Handler) -> Handler:
            self.register(type, func, backoff=backoff)
            return func

        return register

    def register(self, type: str, func: Handler, *, backoff: BackoffFunc | None = None) -> None:
        validate_type(type)
        policy = None if backoff is None else CustomBackoff(type, backoff)
        self.handlers[type] = HandlerSpec(type, func, inspect.iscoroutinefunction(func), policy)

    # ------------------------------------------------------------ producing

    def build(self, type: str, payload: Any = None, **options: Any) -> NewJob:
        """Validate a job without storing it (delay and timeout in milliseconds)."""
        if not options:
            return new_plain_job(self.settings, type, payload)
        return new_job(self.settings, type, payload, **options)

    async def create(
        self,
        type: str,
        payload: Any = None,
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        **options: Any,
    ) -> Job:
        """Create one job; with `conn`, inside that connection's current transaction.

        Options: queue, priority (name or int), attempts or max_retries, delay (ms) or
        run_at, backoff, timeout (ms), unique_key (with unique_for in ms, unique_states,
        on_conflict "return"/"raise"), depends_on (ids or built jobs) with
        dependency_policy ("fail", "ignore", "cancel"), rate_limit_key, metadata.
        """
        job = self.build(type, payload, **options)
        stored = (await self._insert([job], conn))[0]
        if conn is None and stored.status == "pending":
            await self.notify_committed([stored.queue])
        return stored

    async def create_many(
        self,
        jobs: Iterable[NewJob | Mapping[str, Any]],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[UUID]:
        """Create many jobs in one transaction and return their ids in order.

        Each item is a `NewJob` from `build()` or an API-shaped mapping
        `{"type", "queue", "payload", "options"}`.
        """
        batch = self._batch(jobs)
        if not batch:
            return []
        if conn is not None:
            return await client.create_many_async(conn, batch, self.clock)
        pool = await self.pool()
        async with pool.connection() as own, own.transaction():
            ids = await client.create_many_async(own, batch, self.clock)
        await self.notify_committed(job.queue for job in batch)
        return ids

    async def flow(
        self,
        jobs: Iterable[FlowItem],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> CreatedFlow:
        """Create a tree or DAG of jobs, all or nothing, and return their ids.

        Items are `NewJob`s from `build()` (`depends_on` may name other built jobs) or
        API-shaped mappings with an optional `"ref"` that other items' `dependsOn` can
        name. A flow without unique keys is one statement, whatever its size.
        """
        plan = plan_flow(self.settings, jobs)
        if conn is not None:
            return await create_flow_async(conn, plan, self.clock)
        pool = await self.pool()
        async with pool.connection() as own:
            if not plan.needs_transaction:
                created = await create_flow_async(own, plan, self.clock)
            else:
                async with own.transaction():
                    created = await create_flow_async(own, plan, self.clock)
        await self.notify_committed(plan.start_queues)
        return created

    async def get(self, job_id: UUID | str) -> Job:
        """The job with its results and failure history (JobNotFound if none)."""
        jid = client.parse_job_id(job_id)
        return client.decode_job(jid, await self._fetch(client.get_statement(jid)))

    async def cancel(self, job_id: UUID | str) -> Job:
        """Cancel a waiting job now, or ask the worker running it to stop."""
        jid = client.parse_job_id(job_id)
        row = await self._fetch(client.cancel_statement(jid, self.clock))
        return client.decode_cancel(jid, row)

    async def retry(self, job_id: UUID | str) -> Job:
        """Queue a failed or cancelled job again with a fresh budget of attempts."""
        jid = client.parse_job_id(job_id)
        job = client.decode_retry(jid, await self._fetch(client.retry_statement(jid, self.clock)))
        # A job with dependencies was settled against them after the row was returned.
        return job if job.status != "blocked" else await self.get(jid)

    # ------------------------------------------------------------ sync adapters

    def create_sync(
        self,
        type: str,
        payload: Any = None,
        *,
        conn: psycopg.Connection[Any] | None = None,
        **options: Any,
    ) -> Job:
        job = self.build(type, payload, **options)
        if conn is not None:
            return client.insert_sync(conn, [job], self.clock)[0]
        with self.sync_pool().connection() as own:
            stored = client.insert_sync(own, [job], self.clock)[0]
        if stored.status == "pending":
            self.notify_committed_sync([stored.queue])
        return stored

    def create_many_sync(
        self,
        jobs: Iterable[NewJob | Mapping[str, Any]],
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[UUID]:
        batch = self._batch(jobs)
        if not batch:
            return []
        if conn is not None:
            return client.create_many_sync(conn, batch, self.clock)
        with self.sync_pool().connection() as own, own.transaction():
            ids = client.create_many_sync(own, batch, self.clock)
        self.notify_committed_sync(job.queue for job in batch)
        return ids

    def flow_sync(
        self,
        jobs: Iterable[FlowItem],
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> CreatedFlow:
        plan = plan_flow(self.settings, jobs)
        if conn is not None:
            return create_flow_sync(conn, plan, self.clock)
        with self.sync_pool().connection() as own:
            if not plan.needs_transaction:
                created = create_flow_sync(own, plan, self.clock)
            else:
                with own.transaction():
                    created = create_flow_sync(own, plan, self.clock)
        self.notify_committed_sync(plan.start_queues)
        return created

    def get_sync(self, job_id: UUID | str) -> Job:
        jid = client.parse_job_id(job_id)
        return client.decode_job(jid, self._fetch_sync(client.get_statement(jid)))

    def cancel_sync(self, job_id: UUID | str) -> Job:
        jid = client.parse_job_id(job_id)
        return client.decode_cancel(jid, self._fetch_sync(client.cancel_statement(jid, self.clock)))

    def retry_sync(self, job_id: UUID | str) -> Job:
        jid = client.parse_job_id(job_id)
        job = client.decode_retry(jid, self._fetch_sync(client.retry_statement(jid, self.clock)))
        return job if job.status != "blocked" else self.get_sync(jid)

    # ------------------------------------------------------------ schedules

    async def schedule(
        self,
        name: str,
        type: str,
        cron: str,
        payload: Any = None,
        *,
        replace: bool = False,
        **fields: Any,
    ) -> Schedule:
        """Create a recurring schedule; with `replace`, redefine one of that name.

        Fields: queue, timezone (IANA, default UTC), description, misfire ("skip",
        "run_once", "catch_up"), max_catch_up, priority, enabled, and job options
        (attempts, max_retries, backoff, timeout, rate_limit_key, metadata)."""
        definition = sched.schedule_fields(name, type, cron, payload, **fields)
        async with self.connection() as conn:
            if replace:
                return await sched.upsert_schedule(conn, self.settings, self.clock, definition)
            return await sched.create_schedule(conn, self.settings, self.clock, definition)

    async def schedules(self) -> list[Schedule]:
        async with self.connection() as conn:
            return await sched.list_schedules(conn)

    async def get_schedule(self, name: str, *, upcoming: int = 0) -> Schedule:
        async with self.connection() as conn:
            return await sched.get_schedule(conn, name, upcoming=upcoming)

    async def update_schedule(self, name: str, /, **changes: Any) -> Schedule:
        """Change fields of a schedule: name, type, cron, payload, queue, timezone,
        description, misfire, max_catch_up, priority, enabled, options (replaces all)."""
        async with self.connection() as conn:
            return await sched.update_schedule(conn, self.settings, self.clock, name, changes)

    async def enable_schedule(self, name: str) -> Schedule:
        async with self.connection() as conn:
            return await sched.set_enabled(conn, self.settings, self.clock, name, True)

    async def disable_schedule(self, name: str) -> Schedule:
        async with self.connection() as conn:
            return await sched.set_enabled(conn, self.settings, self.clock, name, False)

    async def delete_schedule(self, name: str) -> Schedule:
        async with self.connection() as conn:
            return await sched.delete_schedule(conn, name)

    def schedule_sync(
        self,
        name: str,
        type: str,
        cron: str,
        payload: Any = None,
        *,
        replace: bool = False,
        **fields: Any,
    ) -> Schedule:
        definition = sched.schedule_fields(name, type, cron, payload, **fields)
        with self.sync_pool().connection() as conn:
            if replace:
                return sched.upsert_schedule_sync(conn, self.settings, self.clock, definition)
            return sched.create_schedule_sync(conn, self.settings, self.clock, definition)

    def schedules_sync(self) -> list[Schedule]:
        with self.sync_pool().connection() as conn:
            return sched.list_schedules_sync(conn)

    def get_schedule_sync(self, name: str, *, upcoming: int = 0) -> Schedule:
        with self.sync_pool().connection() as conn:
            return sched.get_schedule_sync(conn, name, upcoming=upcoming)

    def update_schedule_sync(self, name: str, /, **changes: Any) -> Schedule:
        with self.sync_pool().connection() as conn:
            return sched.update_schedule_sync(conn, self.settings, self.clock, name, changes)

    def enable_schedule_sync(self, name: str) -> Schedule:
        with self.sync_pool().connection() as conn:
            return sched.set_enabled_sync(conn, self.settings, self.clock, name, True)

    def disable_schedule_sync(self, name: str) -> Schedule:
        with self.sync_pool().connection() as conn:
            return sched.set_enabled_sync(conn, self.settings, self.clock, name, False)

    def delete_schedule_sync(self, name: str) -> Schedule:
        with self.sync_pool().connection() as conn:
            return sched.delete_schedule_sync(conn, name)

    # ------------------------------------------------------------ wake-ups, events, results

    async def notify_committed(self, queues: Iterable[str]) -> None:
        """Wake workers over Redis for jobs enqueued in `queues` by a transaction that
        has committed. create()/create_many() without `conn` do this themselves; with
        your own connection, call it after your commit (NOTIFY, sent by PostgreSQL at
        commit, and the workers' poll cover it otherwise). A no-op without Redis."""
        if self.settings.redis_url is None:
            return
        names = set(queues)
        if not names:
            return
        # Best effort: the jobs are committed, so nothing here may raise to the caller
        # (a request answered with an error after its write is retried: a duplicate).
        try:
            if self._database is None:
                async with self.connection() as conn:
                    self._database = conn.info.dbname
            await self._wakeup_publisher().publish(self._database, names)
        except Exception as exc:
            log.warning("redis wake-up after commit skipped (%s)", short_error(exc))

    def notify_committed_sync(self, queues: Iterable[str]) -> None:
        if self.settings.redis_url is None:
            return
        names = set(queues)
        if not names:
            return
        try:
            if self._database is None:
                with self.sync_pool().connection() as conn:
                    self._database = conn.info.dbname
            self._wakeup_publisher().publish_sync(self._database, names)
        except Exception as exc:
            log.warning("redis wake-up after commit skipped (%s)", short_error(exc))

    def _wakeup_publisher(self) -> WakeupPublisher:
        if self._wakeups is None:
            assert self.settings.redis_url is not None
            self._wakeups = WakeupPublisher(self.settings.redis_url)
        return self._wakeups

    async def wait(self, job_id: UUID | str, timeout: float | None = None) -> Any:
        """Wait until the job finishes and return its result.

        Raises `JobFailed` (with the job's last error) if it failed for good or was
        cancelled, `JobNotFound` if there is no such job, and `TimeoutError` after
        `timeout` seconds. Job events make it return at once; the awaited jobs are also
        re-read every poll interval, so it never depends on an event arriving."""
        return await self._event_hub().wait(client.parse_job_id(job_id), timeout)

    def events(
        self,
        *,
        queues: Iterable[str] | None = None,
        job_ids: Iterable[UUID | str] | None = None,
        events: Iterable[str] | None = None,
    ) -> EventStream:
        """Job events as they happen (`progress`, `completed`, `failed`, `retrying`,
        `stalled`, `cancelled`), optionally only of some queues, jobs or event names:

            async with app.events(queues=["emails"]) as stream:
                async for event in stream:
                    print(event.event, event.id, event.status)
        """
        ids = [client.parse_job_id(j) for j in job_ids] if job_ids is not None else None
        return self._event_hub().stream(
            list(queues) if queues is not None else None,
            ids,
            list(events) if events is not None else None,
        )

    def _event_hub(self) -> EventHub:
        loop = asyncio.get_running_loop()
        if self._hub is None or self._hub_loop is not loop:
            self._hub, self._hub_loop = EventHub(self), loop
        return self._hub

    # ------------------------------------------------------------ running

    def worker(
        self,
        queues: Sequence[str] = ("default",),
        concurrency: int | None = None,
        *,
        grace: float | None = None,
        **options: Any,
    ) -> Worker:
        """A worker for `queues`; use as `async with app.worker(...)` or `await w.run()`.

        `grace`: seconds that running jobs get to finish when the worker stops; those
        still running then are given back to the queue (pending, the attempt not
        counted). Default JOBS_SHUTDOWN_GRACE. The worker installs no signal handlers:
        the application decides when to stop it (leave the `async with`, or call
        `await worker.stop()`)."""
        return Worker(self, queues=queues, concurrency=concurrency, grace=grace, **options)

    async def drain(self, *queues: str, concurrency: int | None = None) -> int:
        """Run every job of `queues` that is due now, then return how many ran.

        Meant for tests: no maintenance leader, no wake-up listener."""
        return await drain(self, queues or ("default",), concurrency=concurrency)

    # ------------------------------------------------------------ schema and stats

    async def install(self) -> InitReport:
        """Create or upgrade the schema, as `pgjobs init` does: safe to call on every
        start (idempotent; concurrent calls wait for each other on a lock). Raises
        ServiceUnavailable when PostgreSQL cannot be reached."""
        return await asyncio.to_thread(self.install_sync)

    def install_sync(self) -> InitReport:
        return initialise(self.settings)

    async def stats(
        self, queue: str | None = None, *, hours: float = 24.0, performance: bool = False
    ) -> StatsReport:
        """The counts `pgjobs stats` shows: per queue (waiting, active, delayed, failed,
        ...), the last `hours`' throughput, live workers, database health. With `queue`,
        that queue only (NotFound if it has no jobs and no settings)."""
        # On the primary: the Python API promises to see the caller's own writes.
        return await read_stats(
            reader_of(self.connection),
            self.connection,
            self.settings,
            self.clock,
            queue=queue,
            hours=hours,
            performance=performance,
        )

    def stats_sync(
        self, queue: str | None = None, *, hours: float = 24.0, performance: bool = False
    ) -> StatsReport:
        # The statements are async only: run them on a loop of their own, in a thread
        # (this may be called from code that runs inside an event loop).
        async def read() -> StatsReport:
            async with App(self.settings, clock=self.clock, builtin_types=False) as app:
                return await app.stats(queue, hours=hours, performance=performance)

        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            return thread.submit(asyncio.run, read()).result()

    # ------------------------------------------------------------ connections

    async def pool(self) -> AsyncConnectionPool:
        """The app's async pool, opened on first use in the running event loop."""
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._pool_loop is not loop:
            self._pool = None  # the old loop is gone; its pool cannot be reused
        if self._pool is None:
            pool = make_pool(
                self.settings.require_database_url(),
                "api",
                max_size=8,
                pooled=self.settings.transaction_pooling,
            )
            try:
                await pool.open(wait=True, timeout=15)
            except BaseException:
                # An open pool's tasks outlive cancellation (psycopg_pool's workers
                # swallow it): one left unclosed would hang the loop's shutdown, as
                # when Ctrl-C lands while `pgjobs stats --watch` connects.
                await pool.close()
                raise
            self._pool, self._pool_loop = pool, loop
        return self._pool

    def sync_pool(self) -> ConnectionPool:
        if self._sync_pool is None:
            self._sync_pool = make_sync_pool(
                self.settings.require_database_url(),
                "api",
                pooled=self.settings.transaction_pooling,
            )
        return self._sync_pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        pool = await self.pool()
        async with pool.connection() as conn:
            yield conn

    async def read(
        self,
        read: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
        *,
        primary: Connect | None = None,
    ) -> T:
        """Run the read-only `read(conn)` on the read replica (JOBS_READ_DATABASE_URL)
        while it is reachable and within JOBS_READ_MAX_LAG of the primary, else on a
        primary connection (`primary`, default the app's pool). Where it ran is
        reported to `pgjobs.replica.observe_reads`. Without a replica this is a read of
        the primary. `read` may run twice (on the replica, then on the primary), so it
        must not write."""
        return await self._reads.run(read, primary or self.connection)

    async def close(self) -> None:
        # Every resource is closed even when closing another one fails (an exit stack
        # runs all its callbacks): a pool left open keeps psycopg_pool's workers, which
        # ignore cancellation, and with them the event loop, alive for good.
        hub, self._hub = self._hub, None
        wakeups, self._wakeups = self._wakeups, None
        pool, self._pool = self._pool, None
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.close_sync)
            stack.push_async_callback(self._reads.close)
            if pool is not None:
                stack.push_async_callback(pool.close)
            if wakeups is not None:
                stack.push_async_callback(wakeups.close)
            if hub is not None and self._hub_loop is asyncio.get_running_loop():
                stack.push_async_callback(hub.close)

    def close_sync(self) -> None:
        if self._wakeups is not None:
            self._wakeups.close_sync()
        if self._sync_pool is not None:
            self._sync_pool.close()
            self._sync_pool = None

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ internals

    def _batch(self, jobs: Iterable[NewJob | Mapping[str, Any]]) -> list[NewJob]:
        batch: list[NewJob] = []
        for index, item in enumerate(jobs):
            if isinstance(item, NewJob):
                batch.append(item)
                continue
            try:
                batch.append(new_job_from_request(self.settings, item))
            except ValidationError as exc:
                raise ValidationError(f"job {index}: {exc}", field=exc.field) from None
        return batch

    async def _insert(
        self, jobs: Sequence[NewJob], conn: psycopg.AsyncConnection[Any] | None
    ) -> list[Job]:
        if conn is not None:
            return await client.insert_async(conn, jobs, self.clock)
        # getconn/putconn, not pool.connection(): the insert runs in autocommit, so the
        # context manager's commit at exit has nothing to do, and putconn itself rolls
        # back or discards a connection left in a transaction or broken. The two context
        # managers and the commit round through the connection lock were a tenth of a
        # single create's Python time.
        pool = await self.pool()
        own = await pool.getconn()
        try:
            return await client.insert_async(own, jobs, self.clock)
        finally:
            await pool.putconn(own)

    async def _fetch(self, statement: client.Statement) -> dict[str, Any] | None:
        async with self.connection() as conn:
            return await client.fetch_one_async(conn, statement)

    def _fetch_sync(self, statement: client.Statement) -> dict[str, Any] | None:
        with self.sync_pool().connection() as conn:
            return client.fetch_one_sync(conn, statement)
