"""`pgjobs worker` and `pgjobs server` start and serve without printing a warning.

A warning printed at every start is noise in every operator's logs and hides the ones
that matter; it also means a library is being used in a way it is about to stop
supporting (a redis-py release warned on every asyncio client built with the
synchronous Retry class). Both commands run here as real processes with Redis
configured, so the Redis clients of wake-ups, events and rate limits are all built.
"""

from __future__ import annotations

import re
import signal
from urllib.parse import urlsplit

import httpx
import psycopg

from tests.helpers import wait_until
from tests.paths import APPS
from tests.redis_server import shared_redis_url
from tests.webserver import Process, free_port

# What Python's warnings module prints ("...: UserWarning: text") and what logging
# prints at WARNING level or above.
WARNING_LINE = re.compile(r"Warning:|\bWARNING\b|\bERROR\b|Traceback")


def warning_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if WARNING_LINE.search(line)]


def wait_for_health(base: str, server: Process) -> None:
    def answering() -> bool:
        assert server.proc.poll() is None, server.output()
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answering, timeout=30, message="pgjobs server to answer /health")


def stop(process: Process) -> tuple[int, str]:
    """Ctrl-C the process; its exit status and everything it printed."""
    process.proc.send_signal(signal.SIGINT)
    process.proc.wait(15)
    output = process.output()
    process.stop()
    return int(process.proc.returncode), output


def test_worker_and_server_start_and_serve_without_warnings(db_url: str) -> None:
    env = {
        "DATABASE_URL": db_url,
        "JOBS_REDIS_URL": shared_redis_url(),
        "LOG_LEVEL": "info",
        "PYTHONPATH": APPS,
        "PYTHONWARNINGS": "default",  # Python's own default filters, not the test run's
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = Process(["server", "--port", str(port)], env)
    worker = Process(["worker", "--app", "worker_app:app", "--concurrency", "2"], env)
    try:
        wait_for_health(base, server)
        answer = httpx.post(f"{base}/api/jobs", json={"type": "noop", "payload": {}})
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["id"]

        def completed() -> bool:
            with psycopg.connect(db_url) as conn:
                row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
            return row is not None and row[0] == "completed"

        wait_until(completed, timeout=30, message="the job to complete")
    finally:
        worker_code, worker_output = stop(worker)
        server_code, server_output = stop(server)
    assert worker_code == 0 and "started" in worker_output, worker_output
    assert server_code in (0, -signal.SIGINT), server_output
    assert warning_lines(worker_output) == [], worker_output
    assert warning_lines(server_output) == [], server_output


def test_a_worker_on_the_specs_redis_url_warns_once_about_the_options_it_drops(
    db_url: str,
) -> None:
    """The specification's `?maxRetriesPerRequest=3&enableReadyCheck=true` (ioredis
    options) works; the worker names the dropped options in one line, not once per
    Redis client it builds."""
    server = urlsplit(shared_redis_url())
    url = (
        f"redis://{server.hostname}:{server.port or 6379}/14"
        "?maxRetriesPerRequest=3&enableReadyCheck=true"
    )
    env = {
        "DATABASE_URL": db_url,
        "JOBS_REDIS_URL": url,
        "LOG_LEVEL": "info",
        "PYTHONPATH": APPS,
        "PYTHONWARNINGS": "default",
    }
    worker = Process(["worker", "--app", "worker_app:app", "--concurrency", "2"], env)
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            job_id = conn.execute("SELECT id FROM pgjobs_enqueue('noop', '{}')").fetchone()[0]

            def completed() -> bool:
                row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
                return row is not None and row[0] == "completed"

            wait_until(completed, timeout=30, message="the job to complete")
    finally:
        code, output = stop(worker)
    assert code == 0, output
    [line] = warning_lines(output)
    assert line.endswith(
        "JOBS_REDIS_URL: ignoring maxRetriesPerRequest, enableReadyCheck (options of other "
        "Redis clients, such as ioredis and BullMQ, that mean nothing to redis-py)"
    ), output
