"""A backup much larger than the memory bound keeps the worker's memory flat.

Runs bench/backup_memory.py at a CI-friendly size (the README's 200 MB figure comes from
the same script at its default size). Memory, not time, is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ADMIN_URL

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_backup_of_64_mb_keeps_worker_rss_growth_under_50_mb(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "backup_memory.py"),
            "--mb",
            "64",
            "--out",
            str(tmp_path),
        ],
        env={**os.environ, "PGJOBS_BENCH_DATABASE_URL": ADMIN_URL},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["dump_bytes"] > 64 * 1024 * 1024  # more than the bound passed through
    assert figures["rss_growth_mb"] < 50, figures
    [record] = tmp_path.glob("backup_memory-*.json")
    assert json.loads(record.read_text())["payload"] == {
        "format": "custom",
        "compress": True,
        "encrypt": True,
    }
