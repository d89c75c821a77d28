"""bench/flows.py still runs (tiny counts; no timing is asserted)."""

from __future__ import annotations

from pathlib import Path

from tests.bench_scripts import run_bench_script


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
    _, record = run_bench_script("flows", small, tmp_path)
    results = {r["name"]: r for r in record["results"]}
    created = results["flow create (groups of 99 + merge)"]
    assert (created["jobs"], created["statements"], created["round_trips"]) == (300, 1, 1)
    assert results["run a chain to the end"]["jobs"] == 10
