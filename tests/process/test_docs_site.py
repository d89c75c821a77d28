"""The documentation site builds in strict mode (as `bin/docs build` and CI build it),
and that build does fail on a link to a missing page or a missing heading, so a clean
build means the links between the pages hold."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import ROOT


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    # Not --quiet: it drops warnings before strict mode counts them, and the build passes.
    config = str(root / "mkdocs.yml")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config, "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        # The theme's end-of-life banner is printed on every run; bin/docs hides it too.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_site_builds_in_strict_mode_without_a_warning(tmp_path: Path) -> None:
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr
    for page in ("index.html", "jobs/index.html", "performance/index.html"):
        assert (tmp_path / "site" / page).is_file(), page


@pytest.mark.parametrize(
    ("link", "complaint"),
    [
        ("no-such-page.md", "'no-such-page.md', but the target is not found"),
        ("jobs.md#no-such-heading", "does not contain an anchor '#no-such-heading'"),
    ],
)
def test_a_broken_link_fails_the_strict_build(tmp_path: Path, link: str, complaint: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    with (copy / "docs" / "index.md").open("a") as page:
        page.write(f"\nSee [elsewhere]({link}).\n")
    result = build(copy, tmp_path / "site")
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr
    assert "Aborted with 1 warnings in strict mode" in result.stdout + result.stderr
