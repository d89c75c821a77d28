"""bench/sustained.py still runs (its quick mode: about 20 s with two small workers; no
throughput is asserted beyond "jobs were done")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ADMIN_URL
from tests.paths import ROOT


def test_sustained_benchmark_quick_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.sustained", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PGJOBS_BENCH_DATABASE_URL": ADMIN_URL},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [written] = list(tmp_path.glob("sustained-*.json"))
    record = json.loads(written.read_text())

    samples = record["samples"]
    assert len(samples) >= 5
    assert record["completed"] > 0 and all(s["jobs_per_s"] > 0 for s in samples[1:])
    assert record["windows"] and record["last_over_first"] > 0
    for s in samples:
        # The producer keeps the queue near its depth (200) and never floods it.
        assert 0 <= s["pending"] <= 400
        assert 0 < s["claim_idx_bytes"] < s["table_bytes"] < 1 << 30
        assert s["n_live_tup"] >= 0 and s["n_dead_tup"] >= 0
        # Every job writes WAL; reads from outside shared_buffers may be none at all.
        assert s["wal_bytes"] > 0 and s["wal_fpi"] >= 0 and s["blks_read"] >= 0
    for w in record["windows"]:
        # A job's three writes (created, claimed, finished) take a few KB of WAL.
        assert 1_000 < w["wal_bytes_per_job"] < 100_000, w
        assert w["blks_read_per_job"] >= 0
    assert record["claim_plans"] and all(p["execution_ms"] > 0 for p in record["claim_plans"])
    assert "last / first window throughput" in result.stdout
