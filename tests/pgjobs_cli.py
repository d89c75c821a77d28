"""Running the real `pgjobs` command line in a subprocess, with a controlled environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pgjobs.config import variables


def clean_env(**env: str) -> dict[str, str]:
    """The current environment without any pgjobs setting (nor any JOBS_*), plus `env`."""
    ours = {name for name, _, _ in variables()}
    base = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("JOBS_")}
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


def run_against(db_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`pgjobs ARGS` with DATABASE_URL=`db_url` as the only setting, run from / (no .env)."""
    return run_pgjobs(args, Path("/"), {"DATABASE_URL": db_url}, timeout=timeout)


def one_line_error_problem(result: subprocess.CompletedProcess[str]) -> str | None:
    """What is wrong with a refusal, if anything: the CLI's contract for bad input is exit
    status 2, nothing on stdout and a single `error: ...` line on stderr."""
    lines = result.stderr.strip().splitlines()
    if result.returncode != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
        return f"exit {result.returncode}, stderr {result.stderr[-300:]!r}"
    if result.stdout:
        return f"printed {result.stdout[:100]!r}"
    return None
