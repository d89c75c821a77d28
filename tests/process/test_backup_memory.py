"""A backup much larger than the memory bound keeps the worker's memory flat.

Runs bench/backup_memory.py at a CI-friendly size (the 200 MB figure in
docs/job-types.md comes from the same script at its default size). Memory, not time, is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_scripts import run_bench_script


@pytest.mark.slow
def test_backup_of_64_mb_keeps_worker_rss_growth_under_50_mb(tmp_path: Path) -> None:
    printed, record = run_bench_script("backup_memory", ["--mb", "64"], tmp_path, timeout=600)
    figures = json.loads(printed.strip().splitlines()[-1])
    assert figures["dump_bytes"] > 64 * 1024 * 1024  # more than the bound passed through
    assert figures["rss_growth_mb"] < 50, figures
    assert record["payload"] == {
        "format": "custom",
        "compress": True,
        "encrypt": True,
    }
