"""Producers after a PostgreSQL restart (`pg_ctl restart -m immediate`): every enqueue
path — App.create, create_many, their sync versions and POST /api/jobs — must succeed
again within a second of the server accepting connections, while callers keep trying
throughout the outage."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from pgjobs.app import App
from tests.process.chaos.harness import Cluster, ServerWatch, create_database
from tests.webserver import running_server

RECOVERY_S = 1.0
GIVE_UP_S = 60.0


@dataclass
class Poller:
    """The calls of one enqueue path: when each started, ended and whether it worked."""

    name: str
    calls: list[tuple[float, float, bool]] = field(default_factory=list)

    def record(self, started: float, ok: bool) -> None:
        self.calls.append((started, time.monotonic(), ok))

    def first_success_after(self, moment: float) -> float | None:
        ends = [end for start, end, ok in self.calls if ok and start >= moment]
        return min(ends) if ends else None

    def tried_between(self, begin: float, end: float) -> bool:
        """Whether a call was under way while the server was away."""
        return any(start <= end and stop >= begin for start, stop, _ in self.calls)


def keep_calling(poller: Poller, call: Callable[[], object], stop: threading.Event) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            call()
        except Exception:
            poller.record(started, False)
            time.sleep(0.01)
        else:
            poller.record(started, True)
            time.sleep(0.01)


def async_calls(db_url: str, pollers: list[Poller], stop: threading.Event) -> None:
    async def loop(app: App, poller: Poller, many: bool) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                if many:
                    await app.create_many([{"type": "noop", "payload": {"n": 1}}] * 3)
                else:
                    await app.create("noop", {"n": 1})
            except Exception:
                poller.record(started, False)
            else:
                poller.record(started, True)
            await asyncio.sleep(0.01)

    async def main() -> None:
        async with App(database_url=db_url) as app:
            await asyncio.gather(loop(app, pollers[0], False), loop(app, pollers[1], True))

    asyncio.run(main())


def test_every_enqueue_path_is_back_within_a_second(own_cluster: Cluster) -> None:
    db_url = create_database(own_cluster.url)
    names = ["create", "create_many", "create_sync", "create_many_sync", "POST /api/jobs"]
    pollers = {name: Poller(name) for name in names}
    stop = threading.Event()
    sync_app = App(database_url=db_url)
    with running_server(db_url) as base, httpx.Client(base_url=base, timeout=60) as http:

        def post() -> None:
            http.post("/api/jobs", json={"type": "noop", "payload": {}}).raise_for_status()

        calls: dict[str, Callable[[], object]] = {
            "create_sync": lambda: sync_app.create_sync("noop", {"n": 1}),
            "create_many_sync": lambda: sync_app.create_many_sync(
                [{"type": "noop", "payload": {"n": 1}}] * 3
            ),
            "POST /api/jobs": post,
        }
        threads = [
            threading.Thread(target=keep_calling, args=(pollers[name], call, stop))
            for name, call in calls.items()
        ]
        threads.append(
            threading.Thread(
                target=async_calls,
                args=(db_url, [pollers["create"], pollers["create_many"]], stop),
            )
        )
        for thread in threads:
            thread.start()
        try:
            # Every path works, and has connections that the restart will break.
            deadline = time.monotonic() + 30
            while not all(p.first_success_after(0) for p in pollers.values()):
                assert time.monotonic() < deadline, {n: p.calls[-1:] for n, p in pollers.items()}
                time.sleep(0.05)
            outage = ServerWatch(own_cluster.url)
            outage.start()
            own_cluster.restart_immediate()
            outage.stop()
            assert outage.down_at is not None and outage.up_at is not None, vars(outage)
            deadline = outage.up_at + GIVE_UP_S
            while time.monotonic() < deadline and not all(
                p.first_success_after(outage.down_at) for p in pollers.values()
            ):
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(90)
            sync_app.close_sync()

    late = {}
    for name, poller in pollers.items():
        assert poller.tried_between(outage.down_at, outage.up_at), f"{name} did not try"
        success = poller.first_success_after(outage.down_at)
        back_after = None if success is None else round(success - outage.up_at, 3)
        if back_after is None or back_after > RECOVERY_S:
            late[name] = back_after
    assert not late, f"seconds after the server accepted connections: {late}"
