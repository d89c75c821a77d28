"""JOBS_POOL_MODE and JOBS_LISTEN_DATABASE_URL: what each mode asks of a connection, and
where the LISTEN connections go. Direct mode keeps its session settings."""

from __future__ import annotations

import pytest

from pgjobs.config import load_settings
from pgjobs.db import GENERIC_PLANS, SESSION_OPTIONS, connect_kwargs
from pgjobs.errors import ConfigError

BOUNCER = "postgresql://app@bouncer:6432/jobs"
SERVER = "postgresql://app@db:5432/jobs"


def test_direct_connections_keep_their_session_settings_and_prepared_statements() -> None:
    plain = connect_kwargs("api", "x")
    assert plain["options"] == SESSION_OPTIONS
    assert "prepare_threshold" not in plain  # psycopg's default: prepare after 5 runs
    hot = connect_kwargs("claim", "x", generic_plans=True)
    assert hot["options"] == SESSION_OPTIONS + GENERIC_PLANS
    assert plain["application_name"] == "pgjobs:api:x"


def test_pooled_connections_carry_nothing_a_transaction_pooler_would_lose() -> None:
    for kwargs in (
        connect_kwargs("api", "x", pooled=True),
        connect_kwargs("claim", "x", generic_plans=True, pooled=True),
    ):
        assert "options" not in kwargs
        assert kwargs["prepare_threshold"] is None
        assert kwargs["application_name"].startswith("pgjobs:")


def test_pool_mode_defaults_to_direct_and_rejects_anything_else() -> None:
    assert load_settings({}, env_file=None).pool_mode == "direct"
    settings = load_settings({"JOBS_POOL_MODE": " Transaction "}, env_file=None)
    assert settings.transaction_pooling
    with pytest.raises(ConfigError) as raised:
        load_settings({"JOBS_POOL_MODE": "session"}, env_file=None)
    assert str(raised.value) == "JOBS_POOL_MODE must be direct or transaction (got 'session')"


@pytest.mark.parametrize(
    ("mode", "listen_url", "expected"),
    [
        ("direct", None, BOUNCER),
        ("direct", SERVER, SERVER),
        ("transaction", None, None),
        ("transaction", SERVER, SERVER),
    ],
)
def test_listen_connections_bypass_a_transaction_pooler(
    mode: str, listen_url: str | None, expected: str | None
) -> None:
    env = {"DATABASE_URL": BOUNCER, "JOBS_POOL_MODE": mode}
    if listen_url:
        env["JOBS_LISTEN_DATABASE_URL"] = listen_url
    assert load_settings(env, env_file=None).listen_url == expected


def test_listen_database_url_must_be_a_postgres_url() -> None:
    with pytest.raises(ConfigError, match="JOBS_LISTEN_DATABASE_URL must be a URL like"):
        load_settings({"JOBS_LISTEN_DATABASE_URL": "redis://x:1/0"}, env_file=None)
