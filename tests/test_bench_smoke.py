"""The benchmark scripts still run (with tiny counts; no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ADMIN_URL

ROOT = Path(__file__).resolve().parent.parent


def test_create_many_benchmark_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "create_many.py"),
            "--count",
            "300",
            "--singles",
            "10",
            "--out",
            str(tmp_path),
        ],
        env={**os.environ, "PGJOBS_BENCH_DATABASE_URL": ADMIN_URL},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [written] = list(tmp_path.glob("create_many-*.json"))
    record = json.loads(written.read_text())
    assert [(r["name"], r["jobs"]) for r in record["results"]] == [
        ("create_many, run now (one call)", 300),
        ("create_many, delayed (one call)", 300),
        ("create, one call per job", 10),
    ]
    assert all(r["jobs_per_s"] > 0 for r in record["results"])


def test_rate_limits_benchmark_runs(tmp_path: Path) -> None:
    """Only its quickest scenario: the others measure rates over tens of seconds."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "rate_limits.py"),
            "--only",
            "wakeups",
            "--wakeups",
            "3",
            "--out",
            str(tmp_path),
        ],
        env={**os.environ, "PGJOBS_BENCH_DATABASE_URL": ADMIN_URL},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [written] = list(tmp_path.glob("rate_limits-*.json"))
    record = json.loads(written.read_text())
    assert [r["scenario"] for r in record["results"]] == [
        "start latency: LISTEN off, Redis wake-ups, poll 5 s",
        "start latency: LISTEN on, no Redis, poll 5 s",
        "start latency: LISTEN off, no Redis, poll 1 s",
    ]
