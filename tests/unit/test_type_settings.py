"""Settings of the built-in job types: parsed at start-up, one-line errors naming the
variable, secrets never echoed."""

from __future__ import annotations

import base64

import pytest

from pgjobs import ConfigError
from pgjobs.config import load_settings

KEY = bytes(range(32))


@pytest.mark.parametrize(
    "raw",
    [
        KEY.hex(),
        KEY.hex().upper(),
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(bytes([251] * 32)).decode(),
        f"  {KEY.hex()}\n",
    ],
)
def test_encryption_key_forms(raw: str) -> None:
    key = load_settings({"JOBS_BACKUP_ENCRYPTION_KEY": raw}, env_file=None).backup_encryption_key
    assert key is not None and len(key) == 32


@pytest.mark.parametrize(
    "raw",
    [
        "secret-passphrase",
        KEY.hex()[:-1],
        KEY.hex() + "00",
        base64.b64encode(KEY[:16]).decode(),
        "zz" * 32,
    ],
)
def test_bad_encryption_key_is_a_config_error_that_hides_the_value(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"JOBS_BACKUP_ENCRYPTION_KEY": raw}, env_file=None)
    message = str(caught.value)
    assert caught.value.variable == "JOBS_BACKUP_ENCRYPTION_KEY"
    assert message.startswith(
        "JOBS_BACKUP_ENCRYPTION_KEY must be a 32-byte key given as 64 hex characters or as base64"
    )
    assert raw.strip() not in message and "\n" not in message


@pytest.mark.parametrize(
    ("env", "start"),
    [
        ({"JOBS_SMTP_URL": "mail.example.com:25"}, "JOBS_SMTP_URL must be a URL like smtp://"),
        ({"JOBS_SMTP_URL": "smtp://h:99999"}, "JOBS_SMTP_URL must be"),
        ({"JOBS_SMTP_FROM": "nobody"}, "JOBS_SMTP_FROM must be an email address"),
        ({"JOBS_CLEANUP_ROOTS": "/srv/logs:relative"}, "JOBS_CLEANUP_ROOTS must be absolute"),
        ({"JOBS_CLEANUP_ROOTS": "/"}, "JOBS_CLEANUP_ROOTS must be absolute directories other"),
        ({"JOBS_PG_BINDIR": "bin"}, "JOBS_PG_BINDIR must be an absolute path"),
        ({"JOBS_CUSTOM_ACTION_URL": "hasura:8080"}, "JOBS_CUSTOM_ACTION_URL must be an http"),
        ({"JOBS_HTTP_MAX_RESPONSE_BYTES": "0"}, "JOBS_HTTP_MAX_RESPONSE_BYTES must be a positive"),
        ({"JOBS_HTTP_ALLOW": "10.0.0.0/8, http://x"}, "JOBS_HTTP_ALLOW must be a comma-sep"),
        ({"JOBS_HTTP_DENY": "10.0.0.0/33"}, "JOBS_HTTP_DENY must be a comma-separated"),
        (
            {"JOBS_CUSTOM_ACTION_ORIGINS": "https://hasura/actions"},
            "JOBS_CUSTOM_ACTION_ORIGINS must be comma-separated origins",
        ),
        ({"JOBS_CUSTOM_ACTION_ORIGINS": "hasura:8080"}, "JOBS_CUSTOM_ACTION_ORIGINS must be"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], start: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env, env_file=None)
    assert str(caught.value).startswith(start)
    assert caught.value.variable == next(iter(env))


def test_custom_action_headers_are_parsed_and_never_echoed() -> None:
    settings = load_settings(
        {"JOBS_CUSTOM_ACTION_HEADERS": '{"x-hasura-admin-secret": "s3cret"}'}, env_file=None
    )
    assert settings.custom_action_headers == (("x-hasura-admin-secret", "s3cret"),)
    with pytest.raises(ConfigError) as caught:
        load_settings({"JOBS_CUSTOM_ACTION_HEADERS": '{"x-hasura-admin-secret": 5}'}, env_file=None)
    assert "5" not in str(caught.value).split("like")[0]
    assert caught.value.variable == "JOBS_CUSTOM_ACTION_HEADERS"


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = load_settings(
        {
            "JOBS_BACKUP_ENCRYPTION_KEY": KEY.hex(),
            "JOBS_SMTP_URL": "smtp://user:mailpass@mail.example.com:587",
            "JOBS_CUSTOM_ACTION_HEADERS": '{"x-hasura-admin-secret": "hasurapass"}',
            "JOBS_CLEANUP_ROOTS": "/srv/a:/srv/b/",
        },
        env_file=None,
    )
    text = repr(settings)
    assert "mailpass" not in text and "hasurapass" not in text and KEY.hex() not in text
    assert repr(KEY) not in text
    assert settings.cleanup_roots == ("/srv/a", "/srv/b")
