"""bench/flows.py still runs (tiny counts; no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ADMIN_URL

ROOT = Path(__file__).resolve().parent.parent


def test_flows_benchmark_runs(tmp_path: Path) -> None:
    small = [
        "--count",
        "300",
        "--chain",
        "10",
        "--diamonds",
        "3",
        "--fan-in",
        "10",
        "--unique",
        "40",
    ]
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "flows.py"), *small, "--out", str(tmp_path)],
        env={**os.environ, "PGJOBS_BENCH_DATABASE_URL": ADMIN_URL},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [written] = list(tmp_path.glob("flows-*.json"))
    results = {r["name"]: r for r in json.loads(written.read_text())["results"]}
    created = results["flow create (groups of 99 + merge)"]
    assert (created["jobs"], created["statements"], created["round_trips"]) == (300, 1, 1)
    assert results["run a chain to the end"]["jobs"] == 10
