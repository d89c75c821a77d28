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
    before = scratch_databases()
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

    assert record["contenders"] == ["pgjobs"]
    assert record["rounds"] == 2
    assert record["counts"] == {"drain": 200, "latency": 10, "bulk": 300, "single": 20}
    assert {"pgjobs", "pgjobs_commit", "postgresql"} <= record["versions"].keys()
    runs = [(s["round"], s["workload"], s["contender"]) for s in record["samples"]]
    assert runs == [
        (r, w, "pgjobs") for r in (1, 2) for w in ("drain", "latency", "bulk", "single")
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

    table = record["table"].splitlines()
    assert [cell.strip() for cell in table[0].split(" | ")] == [
        "workload",
        "pgjobs",
        "pgjobs / best peer",
    ]
    assert [line.split(" | ")[0].strip() for line in table[2:8]] == labels
    assert all(line.rstrip().endswith("| -") for line in table[2:8])  # no peer to compare
    assert record["table"] in done.stdout
    assert scratch_databases() <= before  # its scratch database is gone again


def test_an_unknown_peer_is_named_on_one_line() -> None:
    done = run_peers_bench("--peers", "pgjobs,sidekiq")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "bin/bench --peers: error: --peers: unknown peer pgjobs, sidekiq"
    ]
