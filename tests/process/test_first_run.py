"""The first `bin/demo` or `bin/test` in a fresh checkout: creating .venv and installing
the lock takes about a minute, and each step says so before it starts, instead of a
silent wait. Run in a copy of the checkout without .venv; uv's cache makes it quick."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh_checkout() -> Iterator[Path]:
    """The tracked files and the installed uv (.tools), without .venv."""
    path = Path(tempfile.mkdtemp(prefix="pgjobs-checkout-"))
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        for name in filter(None, listed.decode().split("\0")):
            source = Path(ROOT) / name
            if source.is_file():
                target = path / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        tools = Path(ROOT) / ".tools"
        if not (tools / "bin" / "uv").is_file():
            pytest.skip("uv is not installed in .tools (run bin/test once)")
        shutil.copytree(tools, path / ".tools", symlinks=True)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_first_run_says_what_it_is_doing_step_by_step(fresh_checkout: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PGJOBS_VENV")}
    # Offline: the packages come from uv's cache, as on any machine that ran bin/test.
    env["UV_OFFLINE"] = "1"
    result = subprocess.run(
        ["bash", "-c", "source bin/_env.sh && python -c 'import pgjobs, aiosmtpd'"],
        cwd=fresh_checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if result.returncode != 0 and "offline" in result.stderr.lower():
        pytest.skip(f"uv's cache lacks a locked package: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "== creating the virtualenv .venv (first run only)",
        "== installing the packages locked in uv.lock into .venv (first run only, about a minute)",
    ]

    again = subprocess.run(
        ["bash", "-c", "source bin/_env.sh"],
        cwd=fresh_checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""  # later runs are quiet
