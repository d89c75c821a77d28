"""`bin/bench --peers` with pgjobs alone (`--peers none`): the peers themselves are never
installed or run here (no npm or PyPI in CI), only the orchestrator, its table and its
record, with tiny counts (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.bench_scripts import ROOT
from tests.conftest import ADMIN_URL

TINY = ["--drain-count", "200", "--latency-count", "10", "--bulk-count", "300"]


def run_peers_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.peers.run", *args],
        cwd=ROOT,
        env={**os.environ, "PGJOBS_BENCH_DATABASE_URL": ADMIN_URL},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def scratch_databases() -> set[str]:
    with psycopg.connect(ADMIN_URL) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'pgjobs_bench%'"
        ).fetchall()
    return {name for (name,) in rows}


def test_pgjobs_alone_gives_the_table_and_the_record(tmp_path: Path) -> None:
    done = run_peers_bench(
        "--quick",
        "--peers",
        "none",
        "--rounds",
        "2",
        *TINY,
        "--single-count",
        "20",
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    [written] = list(tmp_path.glob("peers-*.json"))
    record = json.loads(written.read_text())

    alone, sql_alone = "PostgreSQL alone", "pgjobs SQL alone"
    assert record["contenders"] == ["pgjobs", alone, sql_alone]
    assert record["rounds"] == 2
    assert record["counts"] == {"drain": 200, "latency": 10, "bulk": 300, "single": 20}
    assert {"pgjobs", "pgjobs_commit", "postgresql"} <= record["versions"].keys()
    runs = [(s["round"], s["workload"], s["contender"]) for s in record["samples"]]
    # Each limit runs the workloads it has a limit for, each after pgjobs: PostgreSQL
    # alone latency and single, pgjobs' SQL alone the drain.
    limit_of = {"drain": sql_alone, "latency": alone, "single": alone}
    assert runs == [
        run
        for r in (1, 2)
        for w in ("drain", "latency", "bulk", "single")
        for run in (
            [(r, w, "pgjobs"), (r, w, limit_of[w])] if w in limit_of else [(r, w, "pgjobs")]
        )
    ]
    labels = [
        "drain 200 c10 jobs/s",
        "latency p50 ms (10 jobs)",
        "latency p95 ms",
        "latency p99 ms",
        "bulk 300 jobs/s",
        "single 20 jobs/s",
    ]
    assert list(record["summary"]) == labels
    for label in labels:
        cell = record["summary"][label]["pgjobs"]
        assert cell["n"] == 2
        assert 0 < cell["min"] <= cell["median"] <= cell["max"]
    assert set(record["summary"]["single 20 jobs/s"]) == {"pgjobs", alone}
    assert set(record["summary"]["drain 200 c10 jobs/s"]) == {"pgjobs", sql_alone}
    assert set(record["summary"]["bulk 300 jobs/s"]) == {"pgjobs"}

    table = record["table"].splitlines()
    assert [cell.strip() for cell in table[0].split(" | ")] == [
        "workload",
        "pgjobs",
        alone,
        sql_alone,
        "pgjobs / best peer",
        "pgjobs / limit",
    ]
    body = {line.split(" | ")[0].strip(): line.split(" | ") for line in table[2:8]}
    assert list(body) == labels
    assert all(cells[4].strip() == "-" for cells in body.values())  # no peer to compare
    single = record["summary"]["single 20 jobs/s"]
    ratio = single["pgjobs"]["median"] / single[alone]["median"]
    assert body["single 20 jobs/s"][5].strip() == f"{ratio:.2f}x {alone}"
    drain = record["summary"]["drain 200 c10 jobs/s"]
    ratio = drain["pgjobs"]["median"] / drain[sql_alone]["median"]
    assert body["drain 200 c10 jobs/s"][5].strip() == f"{ratio:.2f}x {sql_alone}"
    assert body["bulk 300 jobs/s"][5].strip() == "-"
    assert record["table"] in done.stdout
    # Its scratch databases (pgjobs' and each limit's) are gone again; other tests
    # running meanwhile may have scratch databases of their own.
    assert len(set(record["databases"])) == 3
    assert not set(record["databases"]) & scratch_databases()


def test_an_unknown_peer_is_named_on_one_line() -> None:
    done = run_peers_bench("--peers", "pgjobs,sidekiq")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "bin/bench --peers: error: --peers: unknown peer pgjobs, sidekiq"
    ]


def run_contender(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_pgjobs_contenders_name_bad_arguments_and_a_missing_database_on_one_line() -> None:
    """What the harness runs as pgjobs and as the limits: a count or concurrency under 1,
    or a database that cannot be reached, is one line and exit code 2, no traceback."""
    missing = ADMIN_URL.rsplit("/", 1)[0] + "/pgjobs_no_such_database"
    for module in ("pgjobs.dev.workloads", "pgjobs.dev.limits"):
        cases = {
            ("drain", "--database-url", missing, "--count", "0"): "--count must be at least 1",
            ("drain", "--database-url", missing, "--count", "5", "--concurrency", "-1"): (
                "--concurrency must be at least 1"
            ),
            ("single", "--database-url", missing, "--count", "5"): "pgjobs_no_such_database",
        }
        for args, problem in cases.items():
            done = run_contender(module, *args)
            assert done.returncode == 2, (module, args, done.stderr)
            [line] = done.stderr.strip().splitlines()
            assert line.startswith(f"python -m {module}: error: ") and problem in line
            assert done.stdout == ""
