"""The .env `pgjobs demo` writes for other shells: never over a user's .env, read back
as written by pgjobs, and never taken as configuration by the demo's own next start."""

from __future__ import annotations

from pathlib import Path

from dotenv import dotenv_values

from pgjobs.config import load_settings
from pgjobs.dev.demo import export_line, write_env_file
from pgjobs.dev.services import DEMO_ENV_MARK, Sources

VALUES = {
    "DATABASE_URL": "postgresql://postgres@/pgjobs?host=/tmp/a dir/postgres-18",
    "JOBS_REDIS_URL": "unix:///tmp/a dir/redis/redis.sock?db=0",
    "JOBS_SMTP_URL": "smtp://127.0.0.1:2525",
    "JOBS_SMTP_FROM": "pgjobs demo <demo@example.com>",
}


def test_without_a_env_file_the_demo_writes_one_that_pgjobs_reads(tmp_path: Path) -> None:
    written = write_env_file(tmp_path, VALUES)

    assert written == tmp_path / ".env"
    assert written.read_text().startswith(DEMO_ENV_MARK)
    assert dotenv_values(written) == VALUES
    settings = load_settings({}, env_file=written)
    assert settings.database_url == VALUES["DATABASE_URL"]
    assert settings.smtp_from == VALUES["JOBS_SMTP_FROM"]


def test_a_users_env_file_is_left_alone(tmp_path: Path) -> None:
    mine = "DATABASE_URL=postgresql://me@db.internal/prod\n"
    (tmp_path / ".env").write_text(mine)

    assert write_env_file(tmp_path, VALUES) is None
    assert (tmp_path / ".env").read_text() == mine


def test_the_demos_own_env_file_is_rewritten(tmp_path: Path) -> None:
    write_env_file(tmp_path, {**VALUES, "JOBS_SMTP_URL": "smtp://127.0.0.1:1"})
    assert write_env_file(tmp_path, VALUES) == tmp_path / ".env"
    assert dotenv_values(tmp_path / ".env") == VALUES


def test_service_resolution_ignores_the_demos_env_file_but_not_a_users(tmp_path: Path) -> None:
    # What the demo found last time (maybe a private server it has since stopped) must
    # not stop the next start from looking again.
    write_env_file(tmp_path, VALUES)
    demo_file = str(tmp_path / ".env")
    assert "DATABASE_URL" not in Sources.default(environ={}, env_file=demo_file).environ

    (tmp_path / ".env").write_text("DATABASE_URL=postgresql://me@db.internal/prod\n")
    found = Sources.default(environ={}, env_file=demo_file).environ
    assert found["DATABASE_URL"] == "postgresql://me@db.internal/prod"


def test_the_export_line_quotes_for_the_shell() -> None:
    assert export_line({"A": "x y", "B": "plain"}) == "export A='x y' B=plain"
