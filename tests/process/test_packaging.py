"""The built wheel works on its own: installed (not editable) into a fresh virtualenv
outside the repository, `pgjobs init` finds its schema, migrations, views and templates
inside the installed package, and both creates a schema and upgrades an older one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import create_database, database_url, drop_database
from tests.paths import ROOT
from tests.pgjobs_cli import run_pgjobs

pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def installer() -> tuple[str, ...]:
    """An installer for a wheel into another environment: the development environment
    is built by uv (bin/test), which puts no pip into it; pip where there is one."""
    uv = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    if Path(uv).is_file():
        return (uv, "pip")
    return (sys.executable, "-m", "pip")


@pytest.fixture
def old_install_url() -> Iterator[str]:
    """A second empty database, for an install left at an old version."""
    name = create_database("template0")
    try:
        yield database_url(name)
    finally:
        drop_database(name)


def test_wheel_installs_and_inits_outside_the_repo(
    tmp_path: Path, empty_db_url: str, old_install_url: str
) -> None:
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()

    # The build backend is installed with the dev tools, so no download is needed.
    run(sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", dist, cwd=ROOT)
    [wheel] = list(dist.glob("pgjobs-*.whl"))

    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(*installer(), "install", "--python", python, "--no-deps", "--no-index", wheel, cwd=tmp_path)
    # pgjobs itself comes only from the wheel; its dependencies are borrowed from this
    # environment (appended after the venv's own site-packages, so they cannot shadow it).
    site = Path(
        run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=work
        ).strip()
    )
    (site / "_pgjobs_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    probe = run(
        python,
        "-c",
        "import pgjobs, pgjobs.resources as r, pgjobs.queries as q;"
        "print(pgjobs.__file__); print(r.data_path('schema.sql'));"
        "print(r.data_path('views.sql')); print(len(q.names()))",
        cwd=work,
    ).splitlines()
    package = site / "pgjobs"
    assert probe[0] == str(package / "__init__.py")
    data = package / "_data"
    assert probe[1:3] == [str(data / "schema.sql"), str(data / "views.sql")]
    assert int(probe[3]) > 0  # the named SQL statements were found inside the package
    assert (data / "schema.sql").read_text() == (ROOT / "schema.sql").read_text()
    assert (data / "views.sql").read_text() == (ROOT / "views.sql").read_text()
    templates = sorted(
        p.relative_to(ROOT / "templates") for p in (ROOT / "templates").rglob("*") if p.is_file()
    )
    for template in templates:
        assert (data / "templates" / template).is_file(), f"template {template} not shipped"
    for sql in sorted((ROOT / "pgjobs" / "queries").glob("*.sql")):
        assert (package / "queries" / sql.name).is_file(), f"queries/{sql.name} not shipped"
    shipped = sorted(p.name for p in (data / "migrations").iterdir())
    assert shipped == sorted(p.name for p in (ROOT / "migrations").iterdir())
    for name in shipped:
        shipped_bytes = (data / "migrations" / name).read_bytes()
        assert shipped_bytes == (ROOT / "migrations" / name).read_bytes(), name

    pgjobs = (str(venv / "bin" / "pgjobs"),)
    first = run_pgjobs(["init"], work, {"DATABASE_URL": empty_db_url}, executable=pgjobs)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[1].startswith("schema: created (version ")
    second = run_pgjobs(["init"], work, {"DATABASE_URL": empty_db_url}, executable=pgjobs)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[1].startswith("schema: up to date (version ")

    # An install that an older pgjobs made (version 1, built here from the wheel's own
    # migrations) is upgraded by the installed `pgjobs init`.
    run(
        python,
        "-c",
        "import sys, psycopg; from pgjobs.db import install_schema; "
        "install_schema(psycopg.connect(sys.argv[1], autocommit=True), up_to=1)",
        old_install_url,
        cwd=work,
    )
    upgraded = run_pgjobs(["init"], work, {"DATABASE_URL": old_install_url}, executable=pgjobs)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.splitlines()[1].startswith("schema: upgraded from version 1 to ")
