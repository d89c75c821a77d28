"""Running the real `pgjobs` command line in a subprocess, with a controlled environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pgjobs.config import variables


def clean_env(**env: str) -> dict[str, str]:
    """The current environment without any pgjobs setting, plus `env`."""
    ours = {name for name, _, _ in variables()}
    base = {k: v for k, v in os.environ.items() if k not in ours}
    return {**base, **env}


def run_pgjobs(
    args: Sequence[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    executable: Sequence[str] = (sys.executable, "-m", "pgjobs"),
) -> subprocess.CompletedProcess[str]:
    """`pgjobs ARGS` run from `cwd` (so no stray .env is read) with only `env` set."""
    return subprocess.run(
        [*executable, *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
