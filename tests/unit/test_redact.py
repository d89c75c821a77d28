"""Secrets in free text (error messages, stack traces, log lines) are masked by their
shape; text that only resembles a secret is left alone."""

from __future__ import annotations

import time

import pytest

from pgjobs.redact import is_secret_key, mask_secrets, mask_text

MASKED = [
    # URL userinfo, also with '/' or '@' in the password.
    (
        "could not connect to postgres://app:Pa55@db/x",
        "could not connect to postgres://app:***@db/x",
    ),
    ("fetch https://u:p/ss@h/path failed", "fetch https://u:***@h/path failed"),
    ("redis://:p@ss@cache:6379/0", "redis://:***@cache:6379/0"),
    # libpq key=value connection strings, quoted or not.
    ("host=db user=bob password=s3cret dbname=x", "host=db user=bob password=*** dbname=x"),
    ("host=db password='s3 cr\\'et' port=5432", "host=db password='***' port=5432"),
    # KEY=VALUE and KEY: VALUE whose key names a secret.
    ("PGPASSWORD=abc psql -h db", "PGPASSWORD=*** psql -h db"),
    ("token=abc123", "token=***"),
    ("passwd: hunter2", "passwd: ***"),
    ("X-Api-Key: zzz", "X-Api-Key: ***"),
    ("db.password=x other=y", "db.password=*** other=y"),
    # Bearer tokens, in a header or alone.
    ("Authorization: Bearer eyJhbGc.eyJzdWIi.sig-_x", "Authorization: Bearer ***"),
    ("authorization=Basic dXNlcjpwYXNz", "authorization=Basic ***"),
    ("sent Bearer abc123== and failed", "sent Bearer *** and failed"),
    # Query parameters whose key names a secret, also inside another pair's value.
    (
        "GET https://api.x/v1?access_token=abc&page=2",
        "GET https://api.x/v1?access_token=***&page=2",
    ),
    ("url=https://api.x/?page=2&api_key=k1", "url=https://api.x/?page=2&api_key=***"),
    # JSON and a Python dict's repr.
    ('{"password": "x", "n": 1}', '{"password": "***", "n": 1}'),
    ("{'secret': 'x'}", "{'secret': '***'}"),
]

LEFT_ALONE = [
    "monkey=banana keys=3 user=bob host=db port=5432",
    "InvalidTokenError: Signature has expired",
    "NoCredentialsError: Unable to locate credentials",
    "see https://example.com/docs?page=2#section",
    "at 12:00:05 user=bob",
    "password=",
    "tokenizer",
    "a plain sentence about passwords",
]


@pytest.mark.parametrize(("text", "shown"), MASKED)
def test_secret_shapes_are_masked(text: str, shown: str) -> None:
    assert mask_text(text) == shown


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_text_that_only_resembles_a_secret_is_left_alone(text: str) -> None:
    assert mask_text(text) == text


def test_the_key_rule_is_is_secret_key() -> None:
    # A key containing "token" names a secret, whatever follows: text and payloads
    # agree, so tokens_used is masked in both, while monkey (no secret word) is not.
    assert is_secret_key("tokens_used") and not is_secret_key("monkey")
    assert mask_text("monkey=banana tokens_used=5") == "monkey=banana tokens_used=***"
    assert mask_secrets({"tokens_used": 5, "monkey": "banana"}, "•") == {
        "tokens_used": "•",
        "monkey": "banana",
    }


def test_masking_twice_changes_nothing_more() -> None:
    once = mask_text("postgres://a:b@h password=c Bearer d ?token=e")
    assert mask_text(once) == once
    assert "b@" not in once and "=c" not in once and " d" not in once and "=e" not in once


def test_masking_keeps_every_line_of_a_stack_trace() -> None:
    stack = (
        "Traceback (most recent call last):\n"
        '  File "/app/jobs.py", line 3, in run\n'
        "    connect(password=pw)\n"
        "psycopg.OperationalError: password=s3cret\n"
        "next line"
    )
    shown = mask_text(stack)
    assert shown.split("\n")[:2] == stack.split("\n")[:2]
    assert shown.split("\n")[3] == "psycopg.OperationalError: password=***"
    assert shown.split("\n")[4] == "next line"
    assert "s3cret" not in shown and len(shown.split("\n")) == 5


def test_strings_in_payloads_are_masked_as_free_text() -> None:
    masked = mask_secrets({"dsn": "host=db password=x", "urls": ["https://u:p@h"]})
    assert masked == {"dsn": "host=db password=***", "urls": ["https://u:***@h"]}


@pytest.mark.parametrize(
    "text",
    [
        "x:" * 100_000,
        "a://" * 50_000,
        "p://a:b" * 30_000,
        "https://u:" + "@" * 100_000,
        "token:token=" * 30_000,
        "password=" * 30_000,
        "Bearer " * 40_000,
        "'a': '" * 30_000,
        "a" * 200_000,
    ],
)
def test_masking_stays_linear_on_hostile_text(text: str) -> None:
    started = time.monotonic()
    mask_text(text)
    # Linear work on 200 KB takes milliseconds; a quadratic pattern takes minutes.
    assert time.monotonic() - started < 2.0
