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


def test_a_redis_cluster_url_is_refused_in_one_line(tmp_path: Path) -> None:
    cluster = "redis://redis-cluster-1:6379,redis-cluster-2:6379,redis-cluster-3:6379"
    for command in (["worker"], ["stats"]):
        result = run_pgjobs(
            command,
            tmp_path,
            {"DATABASE_URL": "postgresql://postgres@127.0.0.1/postgres", "JOBS_REDIS_URL": cluster},
        )
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        assert result.stderr == (
            "error: JOBS_REDIS_URL lists several servers, a Redis Cluster: pgjobs supports "
            "one Redis server only. Redis is optional (pgjobs uses it for wake-ups, rate-limit "
            "tokens and job events, and does all of that in PostgreSQL without it): give the "
            "URL of one server, or leave JOBS_REDIS_URL unset\n"
        )
