"""Job options: every invalid input is refused with one exact message by every producer
path (app.create, app.create_many, the API-shaped request), and nothing is stored."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import FrozenInstanceError, dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import psycopg
import pytest

from pgjobs.app import App
from pgjobs.errors import ValidationError
from pgjobs.producer.options import (
    NewJob,
    new_job,
    new_job_from_request,
    validate_queue,
    validate_type,
)
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

# Small, so the size limit is easy to cross; every other case stays under it.
MAX_PAYLOAD = 64

QUEUE_RULE = "use 1-100 characters a-z 0-9 . _ : - starting with a letter or digit"
BACKOFF_SHAPE = (
    'backoff must be {"type": "exponential"|"fixed", "delay": ms} or a list of delays in ms'
)
NUL_PAYLOAD = "payload contains a NUL character (\\u0000), which PostgreSQL cannot store"
SURROGATE_PAYLOAD = "payload contains invalid Unicode (a lone surrogate)"

# API option names -> keyword arguments of App.create.
KEYWORDS = {
    "maxRetries": "max_retries",
    "runAt": "run_at",
    "uniqueKey": "unique_key",
    "dependsOn": "depends_on",
    "onDependencyFailure": "dependency_policy",
    "rateLimitKey": "rate_limit_key",
}

_UNSET = object()


@dataclass(frozen=True)
class Case:
    """One invalid request, written the way the REST API receives it."""

    id: str
    message: str
    options: dict[str, Any] | None = None
    payload: Any = _UNSET
    type: Any = "send-email"
    queue: Any = _UNSET
    extra: dict[str, Any] | None = None  # top-level fields beyond the four known ones
    api_only: bool = False  # cannot be expressed as App.create(...) arguments

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type}
        if self.payload is not _UNSET:
            body["payload"] = self.payload
        if self.queue is not _UNSET:
            body["queue"] = self.queue
        if self.options is not None:
            body["options"] = self.options
        body.update(self.extra or {})
        return body

    def create_args(self) -> tuple[Any, Any, dict[str, Any]]:
        kwargs = {KEYWORDS.get(k, k): v for k, v in (self.options or {}).items()}
        if self.queue is not _UNSET:
            kwargs["queue"] = self.queue
        return self.type, None if self.payload is _UNSET else self.payload, kwargs


CIRCULAR: dict[str, Any] = {}
CIRCULAR["self"] = CIRCULAR
DEEP: dict[str, Any] = {}
_level = DEEP
for _ in range(100_000):
    _level["a"] = {}
    _level = _level["a"]


def queue_case(name: str, value: str) -> Case:
    return Case(f"queue-{name}", f"invalid queue name {value!r}: {QUEUE_RULE}", queue=value)


CASES = [
    # ---------------------------------------------------------------- priority
    Case(
        "priority-unknown-name",
        "unknown priority 'urgent': use critical, high, normal, low or an integer",
        {"priority": "urgent"},
    ),
    Case(
        "priority-float",
        "priority must be critical, high, normal, low or an integer",
        {"priority": 1.5},
    ),
    Case(
        "priority-bool",
        "priority must be critical, high, normal, low or an integer",
        {"priority": True},
    ),
    Case(
        "priority-list",
        "priority must be critical, high, normal, low or an integer",
        {"priority": [1]},
    ),
    Case(
        "priority-too-high",
        "priority must be between -1000000 and 1000000 (got 1000001)",
        {"priority": 1_000_001},
    ),
    Case(
        "priority-too-low-as-text",
        "priority must be between -1000000 and 1000000 (got -1000001)",
        {"priority": "-1000001"},
    ),
    # ---------------------------------------------------------------- delay / runAt
    Case(
        "delay-negative",
        "delay must be a non-negative number of milliseconds (got -1)",
        {"delay": -1},
    ),
    Case(
        "delay-slightly-negative",
        "delay must be a non-negative number of milliseconds (got -0.4)",
        {"delay": -0.4},
    ),
    Case("delay-nan", "delay must be a finite number (got nan)", {"delay": math.nan}),
    Case("delay-inf", "delay must be a finite number (got inf)", {"delay": math.inf}),
    Case(
        "delay-text",
        "delay must be a number of milliseconds (got '5000')",
        {"delay": "5000"},
    ),
    Case(
        "delay-too-long",
        "delay must be at most 315360000000 ms (got 315360000001)",
        {"delay": 315_360_000_001},
    ),
    Case(
        "delay-and-runAt",
        "give either delay or runAt, not both",
        {"delay": 1000, "runAt": "2030-01-01T09:00:00+00:00"},
    ),
    Case(
        "runAt-without-offset",
        "runAt needs a timezone offset, e.g. 2030-01-01T09:00:00+00:00",
        {"runAt": "2030-01-01T09:00:00"},
    ),
    Case(
        "runAt-date-only",
        "runAt needs a timezone offset, e.g. 2030-01-01T09:00:00+00:00",
        {"runAt": "2030-01-01"},
    ),
    Case(
        "runAt-words",
        "runAt must be an ISO-8601 time with an offset (got 'next tuesday')",
        {"runAt": "next tuesday"},
    ),
    Case(
        "runAt-number",
        "runAt must be an ISO-8601 time with an offset (got 1700000000)",
        {"runAt": 1_700_000_000},
    ),
    # ---------------------------------------------------------------- attempts
    Case(
        "attempts-and-maxRetries",
        "give either attempts or maxRetries, not both",
        {"attempts": 3, "maxRetries": 2},
    ),
    Case("attempts-zero", "attempts must be at least 1 (got 0)", {"attempts": 0}),
    Case("attempts-negative", "attempts must be at least 1 (got -2)", {"attempts": -2}),
    Case("attempts-fraction", "attempts must be a whole number (got 2.5)", {"attempts": 2.5}),
    Case("attempts-too-many", "attempts must be at most 1000 (got 1001)", {"attempts": 1001}),
    Case("attempts-text", "attempts must be a number (got '3')", {"attempts": "3"}),
    Case(
        "maxRetries-negative",
        "maxRetries must be a non-negative number (got -1)",
        {"maxRetries": -1},
    ),
    Case("maxRetries-too-many", "maxRetries must be at most 999 (got 1000)", {"maxRetries": 1000}),
    # ---------------------------------------------------------------- timeout
    Case("timeout-zero", "timeout must be at least 1 (got 0)", {"timeout": 0}),
    Case("timeout-negative", "timeout must be at least 1 (got -5)", {"timeout": -5}),
    Case("timeout-nan", "timeout must be a finite number (got nan)", {"timeout": math.nan}),
    Case(
        "timeout-too-long",
        "timeout must be at most 2592000000 ms (got 2592000001)",
        {"timeout": 2_592_000_001},
    ),
    # ---------------------------------------------------------------- backoff
    Case("backoff-unknown-type", BACKOFF_SHAPE, {"backoff": {"type": "linear", "delay": 100}}),
    Case("backoff-no-type", BACKOFF_SHAPE, {"backoff": {"delay": 100}}),
    Case(
        "backoff-extra-key",
        BACKOFF_SHAPE,
        {"backoff": {"type": "fixed", "delay": 100, "jitter": True}},
    ),
    Case("backoff-word", BACKOFF_SHAPE, {"backoff": "exponential"}),
    Case("backoff-number", BACKOFF_SHAPE, {"backoff": 1000}),
    Case(
        "backoff-negative-delay",
        "backoff delay must be a non-negative number of milliseconds (got -1)",
        {"backoff": {"type": "fixed", "delay": -1}},
    ),
    Case(
        "backoff-null-delay",
        "backoff delay must be a number of milliseconds (got None)",
        {"backoff": {"type": "exponential", "delay": None}},
    ),
    Case("backoff-empty-list", "backoff list must have 1 to 100 delays", {"backoff": []}),
    Case("backoff-long-list", "backoff list must have 1 to 100 delays", {"backoff": [1] * 101}),
    Case(
        "backoff-list-negative",
        "backoff must be a non-negative number of milliseconds (got -1)",
        {"backoff": [100, -1]},
    ),
    Case(
        "backoff-list-text",
        "backoff must be a number of milliseconds (got 'x')",
        {"backoff": [100, "x"]},
    ),
    # ---------------------------------------------------------------- payload
    Case(
        "payload-with-set",
        "payload is not JSON-serializable: Object of type set is not JSON serializable",
        payload={"tags": {1, 2}},
    ),
    Case(
        "payload-with-datetime",
        "payload is not JSON-serializable: Object of type datetime is not JSON serializable",
        payload={"at": datetime(2030, 1, 1, tzinfo=UTC)},
    ),
    Case(
        "payload-with-bytes",
        "payload is not JSON-serializable: Object of type bytes is not JSON serializable",
        payload={"raw": b"\x00"},
    ),
    Case(
        "payload-with-nan",
        "payload is not JSON-serializable: it contains NaN or Infinity",
        payload={"x": math.nan},
    ),
    Case(
        "payload-with-infinity",
        "payload is not JSON-serializable: it contains NaN or Infinity",
        payload={"x": [-math.inf]},
    ),
    Case(
        "payload-circular",
        "payload is not JSON-serializable: it contains a circular reference",
        payload=CIRCULAR,
    ),
    Case(
        "payload-nested-too-deeply",
        "payload is nested too deeply (the limit is 100 levels)",
        payload=DEEP,
    ),
    Case("payload-set", "payload must be a JSON object", payload={1, 2}),
    Case("payload-list", "payload must be a JSON object", payload=[1, 2]),
    Case("payload-string", "payload must be a JSON object", payload="hello"),
    Case("payload-number", "payload must be a JSON object", payload=5),
    Case(
        "payload-too-big",
        f"payload is 111 bytes; the limit is {MAX_PAYLOAD} (JOBS_MAX_PAYLOAD_BYTES)",
        payload={"data": "x" * 100},
    ),
    Case(
        "payload-too-big-in-utf8-bytes",
        f"payload is 68 bytes; the limit is {MAX_PAYLOAD} (JOBS_MAX_PAYLOAD_BYTES)",
        payload={"d": "é" * 30},
    ),
    Case("payload-nul-in-value", NUL_PAYLOAD, payload={"a": "x\x00y"}),
    Case("payload-nul-in-key", NUL_PAYLOAD, payload={"k\x00": 1}),
    Case("payload-nul-nested", NUL_PAYLOAD, payload={"a": [{"b": "\x00"}]}),
    Case("payload-nul-after-backslash", NUL_PAYLOAD, payload={"a": "\\\x00"}),
    Case("payload-surrogate-in-value", SURROGATE_PAYLOAD, payload={"a": "\ud800"}),
    Case("payload-surrogate-in-key", SURROGATE_PAYLOAD, payload={"\udfff": 1}),
    # ---------------------------------------------------------------- type
    Case("type-nul", "job type contains a NUL character (\\u0000)", type="send\x00email"),
    Case("type-surrogate", "job type contains invalid Unicode (a lone surrogate)", type="x\ud800"),
    Case("type-newline", "job type contains a control character", type="send\nemail"),
    Case(
        "type-empty",
        "job type must be a non-empty string of at most 100 characters",
        type="",
    ),
    Case(
        "type-too-long",
        "job type must be a non-empty string of at most 100 characters",
        type="t" * 101,
    ),
    Case(
        "type-number",
        "job type must be a non-empty string of at most 100 characters",
        type=5,
    ),
    # ---------------------------------------------------------------- queue
    queue_case("uppercase", "Default"),
    queue_case("space", "my queue"),
    queue_case("path", "../etc"),
    queue_case("sql", "q;DROP TABLE jobs"),
    queue_case("101-chars", "q" * 101),
    queue_case("empty", ""),
    queue_case("trailing-newline", "default\n"),
    queue_case("nul", "de\x00fault"),
    Case("queue-number", "queue name must be a string (got int)", queue=5),
    # ---------------------------------------------------------------- other options
    Case(
        "uniqueKey-empty",
        "uniqueKey must be a string of 1 to 255 characters without NUL",
        {"uniqueKey": ""},
    ),
    Case(
        "uniqueKey-nul",
        "uniqueKey must be a string of 1 to 255 characters without NUL",
        {"uniqueKey": "a\x00b"},
    ),
    Case(
        "uniqueKey-surrogate",
        "uniqueKey contains invalid Unicode (a lone surrogate)",
        {"uniqueKey": "\ud800"},
    ),
    Case(
        "rateLimitKey-too-long",
        "rateLimitKey must be a string of 1 to 255 characters without NUL",
        {"rateLimitKey": "k" * 256},
    ),
    Case(
        "dependsOn-not-an-id",
        "dependsOn has an invalid job id 'nope'",
        {"dependsOn": ["nope"]},
    ),
    Case(
        "dependsOn-object",
        "dependsOn must be a job id or a list of job ids",
        {"dependsOn": {"id": "x"}},
    ),
    Case(
        "onDependencyFailure-unknown",
        "onDependencyFailure must be one of fail, ignore, cancel",
        {"onDependencyFailure": "explode"},
    ),
    Case("metadata-list", "metadata must be a JSON object", {"metadata": [1]}),
    Case(
        "metadata-nul",
        "metadata contains a NUL character (\\u0000), which PostgreSQL cannot store",
        {"metadata": {"a": "\x00"}},
    ),
    Case("unknown-option", "unknown option 'retries'", {"retries": 3}),
    # ---------------------------------------------------------------- request shape
    Case(
        "option-given-twice",
        "option 'max_retries' is given twice",
        {"maxRetries": 1, "max_retries": 2},
        api_only=True,
    ),
    Case("unknown-field", "unknown field 'priority'", extra={"priority": 5}, api_only=True),
    Case(
        "options-not-object",
        "options must be a JSON object",
        extra={"options": [1]},
        api_only=True,
    ),
    Case(
        "options-empty-list",
        "options must be a JSON object",
        extra={"options": []},
        api_only=True,
    ),
]


@pytest.fixture
async def strict_app(db_url: str) -> AsyncIterator[App]:
    application = App(make_settings(db_url, JOBS_MAX_PAYLOAD_BYTES=str(MAX_PAYLOAD)))
    try:
        yield application
    finally:
        await application.close()


def job_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) AS n FROM jobs").fetchone()
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_invalid_request_is_refused_everywhere(
    case: Case, strict_app: App, db: psycopg.Connection[Any]
) -> None:
    # The API-shaped path (what POST /api/jobs validates).
    with pytest.raises(ValidationError) as caught:
        new_job_from_request(strict_app.settings, case.body())
    assert str(caught.value) == case.message

    # create_many: one valid job first, so a partial insert would show.
    with pytest.raises(ValidationError) as caught:
        await strict_app.create_many([{"type": "ok"}, case.body()])
    assert str(caught.value) == f"job 1: {case.message}"

    if not case.api_only:
        type_, payload, kwargs = case.create_args()
        with pytest.raises(ValidationError) as caught:
            await strict_app.create(type_, payload, **kwargs)
        assert str(caught.value) == case.message
        with pytest.raises(ValidationError) as caught:
            strict_app.create_sync(type_, payload, **kwargs)
        assert str(caught.value) == case.message
        strict_app.close_sync()

    assert job_count(db) == 0


async def test_the_field_is_named(strict_app: App) -> None:
    cases = {
        "priority": {"priority": "urgent"},
        "delay": {"delay": -1},
        "runAt": {"runAt": "soon"},
        "attempts": {"attempts": 0},
        "backoff": {"backoff": []},
        "retries": {"retries": 1},
    }
    for field, options in cases.items():
        with pytest.raises(ValidationError) as caught:
            new_job_from_request(strict_app.settings, {"type": "t", "options": options})
        assert caught.value.field == field
    with pytest.raises(ValidationError) as caught:
        await strict_app.create("t", queue="Bad")
    assert caught.value.field == "queue"


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["send-email"], "job 0: a job must be a JSON object with at least a 'type'"),
        ([{"payload": {}}], "job 0: missing field 'type'"),
        (
            [{"type": "a"}, {"type": "b"}, None],
            "job 2: a job must be a JSON object with at least a 'type'",
        ),
    ],
)
async def test_create_many_refuses_malformed_items(
    items: list[Any], message: str, strict_app: App, db: psycopg.Connection[Any]
) -> None:
    with pytest.raises(ValidationError) as caught:
        await strict_app.create_many(items)
    assert str(caught.value) == message
    assert job_count(db) == 0


async def test_unknown_dependency_is_refused_and_nothing_is_stored(
    strict_app: App, db: psycopg.Connection[Any]
) -> None:
    missing = "01890000-0000-7000-8000-000000000000"
    message = f"dependsOn names an unknown job {missing}"
    with pytest.raises(ValidationError) as caught:
        await strict_app.create("t", depends_on=[missing])
    assert str(caught.value) == message
    with pytest.raises(ValidationError) as caught:
        await strict_app.create_many(
            [{"type": "a"}, {"type": "t", "options": {"dependsOn": missing}}]
        )
    assert str(caught.value) == message
    assert job_count(db) == 0


# ------------------------------------------------------------------ accepted edge cases


@dataclass(frozen=True)
class Accepted:
    id: str
    options: dict[str, Any]
    expect: dict[str, Any]  # column -> stored value
    payload: Any = None
    queue: str | None = None


FUTURE = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
PLUS_TWO = timezone(timedelta(hours=2))

ACCEPTED = [
    Accepted("priority-int", {"priority": 7}, {"priority": 7}),
    Accepted("priority-negative", {"priority": -5}, {"priority": -5}),
    Accepted("priority-name", {"priority": "high"}, {"priority": 5}),
    Accepted("priority-name-any-case", {"priority": "CRITICAL"}, {"priority": 1}),
    Accepted("priority-low", {"priority": "low"}, {"priority": 20}),
    Accepted("priority-number-as-text", {"priority": " 3 "}, {"priority": 3}),
    Accepted("priority-default", {}, {"priority": 10, "max_attempts": 3, "timeout_ms": 60000}),
    Accepted("maxRetries-zero", {"maxRetries": 0}, {"max_attempts": 1}),
    Accepted("maxRetries-two", {"maxRetries": 2}, {"max_attempts": 3}),
    Accepted("attempts-one", {"attempts": 1}, {"max_attempts": 1}),
    Accepted("attempts-whole-float", {"attempts": 4.0}, {"max_attempts": 4}),
    Accepted("delay-zero", {"delay": 0}, {"status": "pending", "delay_ms": 0}),
    Accepted("delay-rounded", {"delay": 0.4}, {"status": "pending", "delay_ms": 0}),
    Accepted("delay", {"delay": 60000}, {"status": "delayed", "delay_ms": 60000}),
    Accepted(
        "runAt-offset",
        {"runAt": FUTURE.astimezone(PLUS_TWO).isoformat()},
        {"status": "delayed", "run_at": FUTURE},
    ),
    Accepted(
        "runAt-zulu",
        {"runAt": FUTURE.strftime("%Y-%m-%dT%H:%M:%SZ")},
        {"status": "delayed", "run_at": FUTURE},
    ),
    Accepted("runAt-past", {"runAt": "2001-01-01T00:00:00+00:00"}, {"status": "pending"}),
    Accepted("timeout", {"timeout": 1500}, {"timeout_ms": 1500}),
    Accepted(
        "backoff-fixed",
        {"backoff": {"type": "fixed", "delay": 250}},
        {"backoff": {"type": "fixed", "delay": 250}},
    ),
    # No delay given: the worker starts from JOBS_RETRY_DELAY, nothing is made up here.
    Accepted(
        "backoff-type-only",
        {"backoff": {"type": "exponential"}},
        {"backoff": {"type": "exponential"}},
    ),
    Accepted(
        "backoff-list",
        {"backoff": [100, 1000.4, 5000]},
        {"backoff": {"type": "list", "delays": [100, 1000, 5000]}},
    ),
    # Six characters: a backslash and "u0000" — text, not a NUL.
    Accepted(
        "literal-backslash-u0000",
        {},
        {"payload": {"text": "\\u0000", "\\u0000": "key"}},
        payload={"text": "\\u0000", "\\u0000": "key"},
    ),
    Accepted(
        "escaped-backslash-before-u0000",
        {},
        {"payload": {"t": "\\\\u0000"}},
        payload={"t": "\\\\u0000"},
    ),
    Accepted(
        "unicode-beyond-bmp",
        {},
        {"payload": {"emoji": "🎉", "ü": "ß"}},
        payload={"emoji": "🎉", "ü": "ß"},
    ),
    Accepted(
        "payload-exactly-at-the-limit",
        {},
        {"payload": {"d": "x" * (MAX_PAYLOAD - 8)}},
        payload={"d": "x" * (MAX_PAYLOAD - 8)},
    ),
    Accepted("queue-100-chars", {}, {"queue": "q" * 100}, queue="q" * 100),
    Accepted(
        "queue-punctuation", {}, {"queue": "reports.v2:eu-west_1"}, queue="reports.v2:eu-west_1"
    ),
]


def _stored(db: psycopg.Connection[Any], job_id: UUID) -> dict[str, Any]:
    row = db.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return dict(row)


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.id for c in ACCEPTED])
async def test_accepted_edge_cases(
    case: Accepted, strict_app: App, db: psycopg.Connection[Any]
) -> None:
    body: dict[str, Any] = {"type": "edge", "options": case.options}
    if case.payload is not None:
        body["payload"] = case.payload
    if case.queue is not None:
        body["queue"] = case.queue
    kwargs = {KEYWORDS.get(k, k): v for k, v in case.options.items()}
    if case.queue is not None:
        kwargs["queue"] = case.queue

    created = await strict_app.create("edge", case.payload, **kwargs)
    [bulk_id] = await strict_app.create_many([body])
    for job_id in (created.id, bulk_id):
        row = _stored(db, job_id)
        for column, value in case.expect.items():
            assert row[column] == value, (column, row[column])


async def test_api_null_fields_take_their_defaults(strict_app: App) -> None:
    job = new_job_from_request(
        strict_app.settings, {"type": "t", "queue": None, "payload": None, "options": None}
    )
    assert (job.queue, json.loads(job.payload_json)) == ("default", {})


async def test_python_api_accepts_datetimes_and_timedeltas(
    strict_app: App, db: psycopg.Connection[Any]
) -> None:
    at = await strict_app.create("t", run_at=FUTURE.astimezone(PLUS_TWO))
    later = await strict_app.create("t", delay=timedelta(seconds=90))
    assert (at.status, at.run_at) == ("delayed", FUTURE)
    assert (later.status, later.delay_ms) == ("delayed", 90_000)
    with pytest.raises(ValidationError) as caught:
        await strict_app.create("t", run_at=datetime(2030, 1, 1))
    assert str(caught.value) == "runAt needs a timezone offset, e.g. 2030-01-01T09:00:00+00:00"
    assert job_count(db) == 2


@pytest.mark.parametrize(
    ("type_", "payload"),
    [("t", None), ("t", {}), ("t", {"n": 1, "s": "é"}), ("send-email", {"to": "a@b.c"})],
)
async def test_a_job_built_without_options_has_every_default(
    strict_app: App, type_: str, payload: Any
) -> None:
    # App.build without options skips the option parsing: the job must be the same.
    built = strict_app.build(type_, payload)
    full = new_job(strict_app.settings, type_, payload)
    assert isinstance(built, NewJob)
    assert replace(built, id=full.id) == full
    assert built.id.version == 7 and built.id < full.id
    assert type(built) is NewJob and hash(built) == hash(replace(full, id=built.id))
    with pytest.raises(FrozenInstanceError):
        built.priority = 1  # type: ignore[misc]


async def test_remembered_names_are_checked_once_and_kept_exact(strict_app: App) -> None:
    class Name(str):
        pass

    for _ in range(2):  # the second time from what was remembered
        assert validate_type("report.daily") == "report.daily"
        assert validate_queue("reports") == "reports"
    assert type(validate_type(Name("report.daily"))) is Name
    for bad in ("", "-x", "a b", "x" * 101):
        with pytest.raises(ValidationError):
            validate_type(bad)
    with pytest.raises(ValidationError):
        strict_app.build("bad type")


async def test_a_payload_that_failed_to_encode_encodes_once_fixed(strict_app: App) -> None:
    # A failed encoding leaves the encoder's circular-reference marks behind: the next
    # encoding of the same objects must not take them for a cycle.
    inner: dict[str, Any] = {"bad": {1}}
    outer = {"a": inner}
    for _ in range(2):
        with pytest.raises(ValidationError, match="Object of type set"):
            strict_app.build("t", outer)
    inner["bad"] = 1
    assert strict_app.build("t", outer).payload_json == '{"a":{"bad":1}}'
    assert new_job(strict_app.settings, "t", outer, priority=1).payload_json == '{"a":{"bad":1}}'
