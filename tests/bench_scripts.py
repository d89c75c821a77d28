"""Running a script of bench/ against the test server, as the smoke tests do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.conftest import ADMIN_URL

ROOT = Path(__file__).resolve().parent.parent


def run_bench_script(
    script: str, args: Sequence[str], out: Path, timeout: float = 120
) -> tuple[str, dict[str, Any]]:
    """Run bench/<script>.py with `args`, its record written under `out`; return what it
    printed and that JSON record."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), *args, "--out", str(out)],
        env={**os.environ, "PGJOBS_BENCH_DATABASE_URL": ADMIN_URL},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [written] = list(out.glob(f"{script}-*.json"))
    return result.stdout, json.loads(written.read_text())
