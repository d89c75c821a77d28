"""Settings: defaults, validation with one exact line per bad value, .env files, and
the documentation in .env.example kept true to the code."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest

from pgjobs.config import Settings, load_settings, variables
from pgjobs.errors import ConfigError
from tests.paths import ROOT

URL_HINT = "a URL like postgresql://user:password@host:5432/dbname"
REDIS_HINT = "a URL like redis://host:6379/0 (or rediss://, unix://)"


def render(value: Any) -> str:
    """A default as it is written in an environment variable ("" = unset)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value in (None, ()) else str(value)


# Variables whose default is "unset", with a valid value to read (and what it becomes).
SAMPLES: dict[str, tuple[str, Any]] = {
    "DATABASE_URL": ("postgresql://u@db:5432/x", "postgresql://u@db:5432/x"),
    "JOBS_READ_DATABASE_URL": ("postgresql://u@replica:5432/x", "postgresql://u@replica:5432/x"),
    "JOBS_REDIS_URL": ("redis://cache:6379/1", "redis://cache:6379/1"),
    "JOBS_POOL_MODE": ("transaction", "transaction"),
    "JOBS_LISTEN_DATABASE_URL": ("postgresql://u@db:5432/x", "postgresql://u@db:5432/x"),
    "JOBS_APP": ("myapp.jobs:app", "myapp.jobs:app"),
    "JOBS_API_TOKEN": ("t0ken", "t0ken"),
    "JOBS_DASHBOARD_USER": ("ops", "ops"),
    "JOBS_DASHBOARD_PASSWORD": ("pw", "pw"),
    "JOBS_SMTP_URL": ("smtp://u:p@mail:587", "smtp://u:p@mail:587"),
    "JOBS_SMTP_FROM": ("Jobs <jobs@example.com>", "Jobs <jobs@example.com>"),
    "JOBS_EMAIL_TEMPLATES_DIR": ("/srv/mail", "/srv/mail"),
    "JOBS_BACKUP_DIR": ("/srv/backups", "/srv/backups"),
    "JOBS_BACKUP_ROOTS": ("/srv/a:/srv/b", ("/srv/a", "/srv/b")),
    "JOBS_BACKUP_DATABASES": (
        "db2:5433, Reports/sales",
        (("db2", "5433", None), ("reports", "5432", "sales")),
    ),
    "JOBS_PG_BINDIR": ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/15/bin"),
    "JOBS_CLEANUP_ROOTS": ("/tmp/a:/tmp/b", ("/tmp/a", "/tmp/b")),
    "JOBS_CUSTOM_ACTION_URL": ("https://hasura/act", "https://hasura/act"),
    "JOBS_CUSTOM_ACTION_HEADERS": ('{"x-k": "v"}', (("x-k", "v"),)),
    "JOBS_CUSTOM_ACTION_ORIGINS": (
        "https://Hasura:8443, http://actions/",
        ("https://hasura:8443", "http://actions:80"),
    ),
    "JOBS_HTTP_ALLOW": ("10.0.0.0/8, API.internal", ("10.0.0.0/8", "api.internal")),
    "JOBS_HTTP_DENY": ("*.corp.example,fd00::/8", ("*.corp.example", "fd00::/8")),
    "JOBS_BACKUP_ENCRYPTION_KEY": ("00" * 32, bytes(32)),
    "LOG_LEVEL": ("debug", "debug"),
    "JOBS_LOG_FORMAT": ("JSON", "json"),
    "JOBS_LOG_FILE": ("~/logs/worker.log", os.path.expanduser("~/logs/worker.log")),
    "JOBS_DASHBOARD_PATH": ("/ops/jobs", "/ops/jobs"),
    "JOBS_DASHBOARD_HOST": ("0.0.0.0", "0.0.0.0"),
}

GENERIC = ("sample-text", "/srv/pgjobs-sample", "https://example.com/x", "12345")


def _parses(name: str, value: str) -> bool:
    try:
        load_settings({name: value}, env_file=None)
    except ConfigError:
        return False
    return True


WITH_DEFAULTS = [v for v in variables() if render(v[2]) != ""]


def test_defaults_are_the_documented_contract() -> None:
    s = load_settings({}, env_file=None)
    assert s.database_url is None
    assert s.redis_url is None
    assert s.pool_mode == "direct"
    assert s.listen_database_url is None
    assert s.dashboard_enabled is True
    assert s.dashboard_port == 3105
    assert s.dashboard_path == "/dashboard"
    assert s.default_concurrency == 5
    assert s.retry_attempts == 3
    assert s.retry_delay_ms == 5000
    assert s.job_timeout_ms == 60000
    assert s.clean_completed_after_ms == 86_400_000
    assert s.clean_failed_after_ms == 604_800_000
    assert s.log_level == "info"
    assert s.lock_duration_ms == 30000
    assert s.stalled_interval_ms == 30000
    assert s.max_stalled_count == 2
    assert s.api_token is None
    assert s.dashboard_user is None
    assert s.dashboard_password is None


@pytest.mark.parametrize(
    ("variable", "field_name", "default"), WITH_DEFAULTS, ids=[v[0] for v in WITH_DEFAULTS]
)
def test_every_setting_parses_its_default(variable: str, field_name: str, default: Any) -> None:
    parsed = load_settings({variable: render(default)}, env_file=None)
    assert getattr(parsed, field_name) == default


def test_every_setting_is_read_from_its_variable() -> None:
    """Each variable reaches its own field: a non-default value set in the environment
    shows up on exactly that field."""
    names = [name for name, _, _ in variables()]
    assert len(names) == len(set(names))
    defaults = load_settings({}, env_file=None)
    for name, field_name, default in variables():
        if name in SAMPLES:
            value, expected = SAMPLES[name]
        elif isinstance(default, bool):
            value, expected = render(not default), not default
        elif isinstance(default, int):
            value, expected = str(default + 7), default + 7
        else:
            # A setting added later: any generic value its parser accepts will do.
            value = next((v for v in GENERIC if _parses(name, v)), "")
            if not value:
                pytest.fail(f"add a sample value of {name} to SAMPLES")
            expected = getattr(load_settings({name: value}, env_file=None), field_name)
        loaded = load_settings({name: value}, env_file=None)
        assert getattr(loaded, field_name) == expected, name
        changed = [
            f.name
            for f in dataclasses.fields(Settings)
            if getattr(loaded, f.name) != getattr(defaults, f.name)
        ]
        assert changed == [field_name], name


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"JOBS_DEFAULT_CONCURRENCY": "abc"},
            "JOBS_DEFAULT_CONCURRENCY must be an integer (got 'abc')",
        ),
        (
            {"JOBS_DEFAULT_CONCURRENCY": "0"},
            "JOBS_DEFAULT_CONCURRENCY must be a positive integer (got '0')",
        ),
        (
            {"JOBS_DEFAULT_CONCURRENCY": "2.5"},
            "JOBS_DEFAULT_CONCURRENCY must be an integer (got '2.5')",
        ),
        ({"JOBS_JOB_TIMEOUT": "-5"}, "JOBS_JOB_TIMEOUT must be a positive integer (got '-5')"),
        ({"JOBS_JOB_TIMEOUT": "0"}, "JOBS_JOB_TIMEOUT must be a positive integer (got '0')"),
        (
            {"JOBS_RETRY_DELAY": "-1"},
            "JOBS_RETRY_DELAY must be a non-negative integer (got '-1')",
        ),
        (
            {"JOBS_CLEAN_COMPLETED_AFTER": "-3600000"},
            "JOBS_CLEAN_COMPLETED_AFTER must be a non-negative integer (got '-3600000')",
        ),
        (
            {"JOBS_LOCK_DURATION": "-1"},
            "JOBS_LOCK_DURATION must be a positive integer (got '-1')",
        ),
        (
            {"JOBS_RETRY_ATTEMPTS": "0"},
            "JOBS_RETRY_ATTEMPTS must be a positive integer (got '0')",
        ),
        (
            {"JOBS_DASHBOARD_PORT": "99999"},
            "JOBS_DASHBOARD_PORT must be a TCP port between 1 and 65535 (got '99999')",
        ),
        (
            {"JOBS_DASHBOARD_PORT": "0"},
            "JOBS_DASHBOARD_PORT must be a TCP port between 1 and 65535 (got '0')",
        ),
        (
            {"JOBS_DASHBOARD_PORT": "http"},
            "JOBS_DASHBOARD_PORT must be an integer (got 'http')",
        ),
        ({"DATABASE_URL": "mysql://x"}, f"DATABASE_URL must be {URL_HINT} (got 'mysql://x')"),
        ({"DATABASE_URL": "not a url"}, f"DATABASE_URL must be {URL_HINT} (got 'not a url')"),
        (
            {"DATABASE_URL": "postgresql://"},
            f"DATABASE_URL must be {URL_HINT} (got 'postgresql://')",
        ),
        (
            {"DATABASE_URL": "postgresql:dbname"},
            f"DATABASE_URL must be {URL_HINT} (got 'postgresql:dbname')",
        ),
        (
            {"JOBS_READ_DATABASE_URL": "replica:5432"},
            f"JOBS_READ_DATABASE_URL must be {URL_HINT} (got 'replica:5432')",
        ),
        ({"JOBS_READ_MAX_LAG": "0"}, "JOBS_READ_MAX_LAG must be a positive integer (got '0')"),
        # The password of a rejected URL is masked: this line ends up in logs.
        (
            {"DATABASE_URL": "mysql://app:s3cr@t@db/x"},
            f"DATABASE_URL must be {URL_HINT} (got 'mysql://app:***@db/x')",
        ),
        (
            {"JOBS_REDIS_URL": "localhost:6379"},
            f"JOBS_REDIS_URL must be {REDIS_HINT} (got 'localhost:6379')",
        ),
        (
            {"JOBS_REDIS_URL": "http://cache:6379"},
            f"JOBS_REDIS_URL must be {REDIS_HINT} (got 'http://cache:6379')",
        ),
        ({"JOBS_REDIS_URL": "redis://"}, f"JOBS_REDIS_URL must be {REDIS_HINT} (got 'redis://')"),
        (
            {"JOBS_REDIS_URL": "memcached://:hunter2@cache"},
            f"JOBS_REDIS_URL must be {REDIS_HINT} (got 'memcached://:***@cache')",
        ),
        (
            {"LOG_LEVEL": "loud"},
            "LOG_LEVEL must be one of debug, info, warning, error (got 'loud')",
        ),
        ({"JOBS_LOG_FORMAT": "xml"}, "JOBS_LOG_FORMAT must be text or json (got 'xml')"),
        (
            {"JOBS_LOG_FILE": "/var/log/pgjobs/"},
            "JOBS_LOG_FILE must be a file path like ~/.nself/logs/plugins/jobs/worker.log "
            "(got '/var/log/pgjobs/')",
        ),
        (
            {"JOBS_LOG_MAX_BYTES": "-1"},
            "JOBS_LOG_MAX_BYTES must be a non-negative integer (got '-1')",
        ),
        # Without a backup, RotatingFileHandler never rotates: the file would grow forever.
        ({"JOBS_LOG_BACKUPS": "0"}, "JOBS_LOG_BACKUPS must be a positive integer (got '0')"),
        (
            {"JOBS_DASHBOARD_PATH": "dashboard"},
            "JOBS_DASHBOARD_PATH must be an absolute path starting with / (got 'dashboard')",
        ),
        (
            {"JOBS_DASHBOARD_ENABLED": "maybe"},
            "JOBS_DASHBOARD_ENABLED must be true or false (got 'maybe')",
        ),
        ({"JOBS_LISTEN": "2"}, "JOBS_LISTEN must be true or false (got '2')"),
        (
            {"JOBS_DASHBOARD_HOST": "my host"},
            "JOBS_DASHBOARD_HOST must be a host name or IP address (got 'my host')",
        ),
        (
            {"JOBS_MAX_PAYLOAD_BYTES": "1MB"},
            "JOBS_MAX_PAYLOAD_BYTES must be an integer (got '1MB')",
        ),
        (
            {"JOBS_BACKUP_DIR": "backups"},
            "JOBS_BACKUP_DIR must be an absolute directory other than / (got 'backups')",
        ),
        (
            {"JOBS_BACKUP_DATABASES": "db2:99999"},
            "JOBS_BACKUP_DATABASES must be comma-separated host:port or host:port/dbname "
            "entries, without user or password (e.g. db2.internal:5432,reports:5433/sales) "
            "(got 'db2:99999')",
        ),
        (
            {"JOBS_BACKUP_DATABASES": "app:hunter2@db2:5432"},
            "JOBS_BACKUP_DATABASES must not hold user names or passwords: list host:port "
            "entries and put the passwords in the worker's ~/.pgpass",
        ),
        # A newline in the value stays on the one error line.
        (
            {"JOBS_POLL_INTERVAL": "10\n00"},
            "JOBS_POLL_INTERVAL must be an integer (got '10\\n00')",
        ),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_invalid_values_fail_with_one_exact_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env, env_file=None)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)
    assert caught.value.variable == next(iter(env))


def test_log_file_is_expanded_and_made_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's children and a worker that changes directory name the same file."""
    monkeypatch.setenv("HOME", "/home/ops")
    monkeypatch.chdir("/tmp")
    home = load_settings({"JOBS_LOG_FILE": " ~/.nself/logs/w.log "}, env_file=None)
    assert home.log_file == "/home/ops/.nself/logs/w.log"
    relative = load_settings({"JOBS_LOG_FILE": "logs/../w.log"}, env_file=None)
    assert relative.log_file == "/tmp/w.log"
    assert load_settings({"JOBS_LOG_MAX_BYTES": "0"}, env_file=None).log_max_bytes == 0


def test_long_bad_values_are_shortened() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"LOG_LEVEL": "x" * 500}, env_file=None)
    assert str(caught.value) == (
        "LOG_LEVEL must be one of debug, info, warning, error (got '" + "x" * 97 + "...')"
    )


@pytest.mark.parametrize(
    ("env", "field_name", "expected"),
    [
        ({"JOBS_DEFAULT_CONCURRENCY": " 8 "}, "default_concurrency", 8),
        ({"JOBS_CLEAN_FAILED_AFTER": "2_592_000_000"}, "clean_failed_after_ms", 2_592_000_000),
        ({"JOBS_DASHBOARD_ENABLED": "off"}, "dashboard_enabled", False),
        ({"JOBS_DASHBOARD_ENABLED": "YES"}, "dashboard_enabled", True),
        ({"JOBS_DASHBOARD_PATH": "/admin/jobs/"}, "dashboard_path", "/admin/jobs"),
        ({"JOBS_DASHBOARD_PATH": "/"}, "dashboard_path", "/"),
        ({"LOG_LEVEL": "DEBUG"}, "log_level", "debug"),
        ({"DATABASE_URL": "postgres://u:p@h/db"}, "database_url", "postgres://u:p@h/db"),
        ({"DATABASE_URL": "postgresql:///jobs"}, "database_url", "postgresql:///jobs"),
        (
            {"DATABASE_URL": "postgresql://?host=/run/postgresql&dbname=jobs"},
            "database_url",
            "postgresql://?host=/run/postgresql&dbname=jobs",
        ),
        ({"JOBS_REDIS_URL": "rediss://:pw@cache:6380/2"}, "redis_url", "rediss://:pw@cache:6380/2"),
        ({"JOBS_REDIS_URL": "unix:///run/redis.sock"}, "redis_url", "unix:///run/redis.sock"),
        # An empty value means "not set": the default applies.
        ({"JOBS_DASHBOARD_PORT": ""}, "dashboard_port", 3105),
        ({"JOBS_REDIS_URL": "  "}, "redis_url", None),
    ],
)
def test_accepted_forms(env: dict[str, str], field_name: str, expected: Any) -> None:
    assert getattr(load_settings(env, env_file=None), field_name) == expected


def test_settings_are_frozen() -> None:
    s = load_settings({}, env_file=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.dashboard_port = 1  # type: ignore[misc]
    assert s.replace(dashboard_port=8080).dashboard_port == 8080
    assert s.dashboard_port == 3105


def test_require_database_url() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, env_file=None).require_database_url()
    assert str(caught.value) == (
        "DATABASE_URL is not set: give a URL like postgresql://user@127.0.0.1:5432/db"
    )


# ------------------------------------------------------------------ .env files


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\n"
        "DATABASE_URL=postgresql://file@127.0.0.1:5432/from_file\n"
        "JOBS_DASHBOARD_PORT=4000\n"
        'JOBS_API_TOKEN="quoted token"\n'
        "export JOBS_DEFAULT_CONCURRENCY=7\n"
        "UNRELATED=ignored\n"
    )
    from_file = load_settings({}, env_file=env_file)
    assert from_file.database_url == "postgresql://file@127.0.0.1:5432/from_file"
    assert from_file.dashboard_port == 4000
    assert from_file.api_token == "quoted token"
    assert from_file.default_concurrency == 7

    both = load_settings({"JOBS_DASHBOARD_PORT": "5000"}, env_file=env_file)
    assert both.dashboard_port == 5000
    assert both.database_url == "postgresql://file@127.0.0.1:5432/from_file"


def test_env_file_in_the_working_directory_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("JOBS_RETRY_ATTEMPTS=9\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings({}).retry_attempts == 9
    assert load_settings({"JOBS_RETRY_ATTEMPTS": "4"}).retry_attempts == 4


def test_bad_value_in_env_file_names_the_variable(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_LEVEL=loud\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, env_file=env_file)
    assert str(caught.value) == "LOG_LEVEL must be one of debug, info, warning, error (got 'loud')"
    # A good value in the environment overrides the bad one in the file.
    assert load_settings({"LOG_LEVEL": "warning"}, env_file=env_file).log_level == "warning"


def test_missing_env_file_is_fine(tmp_path: Path) -> None:
    assert load_settings({}, env_file=tmp_path / "nope.env") == Settings()


# ------------------------------------------------------------------ .env.example

_EXAMPLE_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def example_entries() -> dict[str, tuple[bool, str]]:
    """NAME -> (active, value) for every assignment line of .env.example."""
    entries: dict[str, tuple[bool, str]] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = _EXAMPLE_LINE.match(line)
        if match:
            name = match.group(2)
            assert name not in entries, f"{name} appears twice in .env.example"
            entries[name] = (match.group(1) is None, match.group(3))
    return entries


def test_env_example_documents_every_setting() -> None:
    entries = example_entries()
    names = [name for name, _, _ in variables()]
    assert sorted(set(names) - set(entries)) == [], "settings missing from .env.example"
    assert sorted(set(entries) - set(names)) == [], ".env.example names unknown variables"


def test_env_example_shows_the_real_defaults() -> None:
    entries = example_entries()
    for name, _, default in variables():
        active, value = entries[name]
        if default is not None:
            assert not active, f"{name} should be commented out: it has a default"
            assert value == render(default), f"{name}: .env.example says {value!r}"
        elif value:
            load_settings({name: value}, env_file=None)  # an example value must be valid


def test_env_example_every_variable_has_a_description() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    for index, line in enumerate(lines):
        if _EXAMPLE_LINE.match(line):
            above = index - 1
            while above >= 0 and _EXAMPLE_LINE.match(lines[above]):
                above -= 1  # a group of related variables shares one description
            assert lines[above].startswith("# ") and len(lines[above]) > 10, line


def test_env_example_loads_as_a_dotenv_file() -> None:
    s = load_settings({}, env_file=ROOT / ".env.example")
    assert s == Settings(database_url=s.database_url)
    assert s.database_url is not None


def test_repr_of_settings_shows_no_secret() -> None:
    secrets = {
        "DATABASE_URL": "postgresql://app:pg-pass-1@db.example:5432/jobs",
        "JOBS_REDIS_URL": "redis://:redis-pass-2@cache.example:6379/0",
        "JOBS_API_TOKEN": "api-token-3",
        "JOBS_DASHBOARD_USER": "admin",
        "JOBS_DASHBOARD_PASSWORD": "dash-pass-4",
        "JOBS_DASHBOARD_READONLY_USER": "viewer",
        "JOBS_DASHBOARD_READONLY_PASSWORD": "ro-pass-5",
        "JOBS_DASHBOARD_SECRET": "csrf-key-6",
        "JOBS_SMTP_URL": "smtp://mailer:smtp-pass-7@mail.example:587",
        "JOBS_CUSTOM_ACTION_URL": "https://hook:hook-pass-8@hooks.example/run",
        "JOBS_CUSTOM_ACTION_HEADERS": '{"x-admin-secret": "header-secret-9"}',
        "JOBS_BACKUP_ENCRYPTION_KEY": "ab" * 32,
    }
    s = load_settings(secrets, env_file=None)
    assert s.api_token == "api-token-3" and s.database_url == secrets["DATABASE_URL"]
    for shown in (repr(s), str(s), f"{s}", repr([s])):
        for value in (
            "pg-pass-1",
            "redis-pass-2",
            "api-token-3",
            "dash-pass-4",
            "ro-pass-5",
            "csrf-key-6",
            "smtp-pass-7",
            "hook-pass-8",
            "header-secret-9",
            "abab",
        ):
            assert value not in shown, value
        assert "postgresql://app:***@db.example:5432/jobs" in shown
        assert "redis://:***@cache.example:6379/0" in shown
        assert "dashboard_user='admin'" in shown


def test_allowed_hosts() -> None:
    parsed = load_settings(
        {"JOBS_ALLOWED_HOSTS": " Jobs.Example.com. ,[::1], *.corp.example"}, env_file=None
    )
    assert parsed.allowed_hosts == ("jobs.example.com", "::1", "*.corp.example")
    for bad in ("jobs.example.com:8080", "http://jobs.example.com", "a b", "evil*.com", ","):
        with pytest.raises(ConfigError, match="JOBS_ALLOWED_HOSTS"):
            load_settings({"JOBS_ALLOWED_HOSTS": bad}, env_file=None)
