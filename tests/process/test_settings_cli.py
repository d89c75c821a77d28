"""The command line refuses bad settings with one line and exit status 2, before it
connects to anything (split from tests/unit/test_config.py and
tests/unit/test_type_settings.py, which check the same settings in process)."""

from __future__ import annotations

from pathlib import Path

from tests.pgjobs_cli import run_pgjobs


def test_cli_reports_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    result = run_pgjobs(["init"], tmp_path, {"JOBS_DEFAULT_CONCURRENCY": "abc"})
    assert result.returncode == 2
    assert result.stderr == "error: JOBS_DEFAULT_CONCURRENCY must be an integer (got 'abc')\n"
    assert result.stdout == ""


def test_cli_reads_the_env_file_of_its_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("JOBS_DASHBOARD_PATH=dashboard\n")
    result = run_pgjobs(["init"], tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "error: JOBS_DASHBOARD_PATH must be an absolute path starting with / (got 'dashboard')\n"
    )
    assert result.stdout == ""


def test_cli_without_database_url(tmp_path: Path) -> None:
    result = run_pgjobs(["init"], tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "error: DATABASE_URL is not set: give a URL like postgresql://user@127.0.0.1:5432/db\n"
    )
    assert result.stdout == ""


def test_cli_stops_with_one_line_on_a_bad_key(tmp_path: Path) -> None:
    done = run_pgjobs(
        ["backup-restore", "x.dump", "--database", "postgresql://postgres@127.0.0.1/x"],
        tmp_path,
        {"JOBS_BACKUP_ENCRYPTION_KEY": "too-short"},
    )
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: JOBS_BACKUP_ENCRYPTION_KEY must be a 32-byte key")
    assert "too-short" not in line
