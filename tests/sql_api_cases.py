"""One table of job option sets, run through both the Python API (`App.create`) and the
SQL API (`SELECT * FROM pgjobs_enqueue(type, payload, options)`): each must store the
same row or fail with the same message. Options are JSON, as a SQL caller writes them;
"queue" among them is the queue (a keyword of its own in Python).

A case's `setup` names jobs created first on both sides (by the same API as the case),
so a case may depend on them ("@name" in dependsOn) or collide with their unique keys;
`finish` marks one of them completed before the case runs.
"""

from __future__ import annotations

from typing import Any

PARENT_DONE = "018f0000-0000-7000-8000-000000000001"
PARENT_FAILED = "018f0000-0000-7000-8000-000000000002"
UNKNOWN = "018f0000-0000-7000-8000-0000000000ff"

# Settings both sides run with: not the defaults, so the SQL side must read them.
SETTINGS = {
    "JOBS_RETRY_ATTEMPTS": "7",
    "JOBS_JOB_TIMEOUT": "45000",
    "JOBS_MAX_PAYLOAD_BYTES": "300",
}

Case = dict[str, Any]


def ok(name: str, options: dict[str, Any] | None = None, **extra: Any) -> Case:
    return {"name": name, "type": "t", "payload": {"n": 1}, "options": options or {}, **extra}


def bad(name: str, options: dict[str, Any], error: str, **extra: Any) -> Case:
    return {**ok(name, options, **extra), "error": error}


def nested(levels: int) -> list[Any]:
    """Arrays nested `levels` deep."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


CASES: list[Case] = [
    # valid
    ok("defaults from settings"),
    ok("queue", {"queue": "emails.v2:eu-1"}),
    ok("priority name", {"priority": "high"}),
    ok("priority name in any case", {"priority": " Critical "}),
    ok("priority number", {"priority": -42}),
    ok("priority numeric string", {"priority": "17"}),
    ok("attempts", {"attempts": 5}),
    ok("attempts as 2.0", {"attempts": 2.0}),
    ok("maxRetries", {"maxRetries": 0}),
    ok("max_retries snake case", {"max_retries": 4}),
    ok("delay", {"delay": 60000}),
    ok("delay rounds half to even", {"delay": 2500.5}),
    ok("delay zero runs now", {"delay": 0}),
    ok("runAt in the future", {"runAt": "2031-05-06T07:08:09.5+02:00"}),
    ok("runAt Z", {"runAt": "2031-05-06T07:08:09Z"}),
    ok("runAt in the past is pending", {"run_at": "2001-01-01T00:00:00+00:00"}),
    ok("backoff list", {"backoff": [100, 2000.4, 0]}),
    ok("backoff exponential", {"backoff": {"type": "exponential", "delay": 500}}),
    ok("backoff fixed without delay", {"backoff": {"type": "fixed"}}),
    ok("timeout", {"timeout": 1500}),
    ok("unique key", {"uniqueKey": "order-1"}),
    ok(
        "unique key with options",
        {
            "uniqueKey": "k2",
            "uniqueFor": 1000,
            "uniqueStates": ["active", "pending"],
            "onConflict": "raise",
        },
    ),
    ok(
        "unique key held returns the holder",
        {"uniqueKey": "held"},
        setup=[("holder", {"uniqueKey": "held"})],
    ),
    ok(
        "unique key of a finished job is free again",
        {"uniqueKey": "done"},
        setup=[("finished", {"uniqueKey": "done"})],
        finish="finished",
    ),
    ok("dependsOn completed parent", {"dependsOn": PARENT_DONE}),
    ok("dependsOn list with duplicates", {"dependsOn": [PARENT_DONE, PARENT_DONE.upper()]}),
    ok("dependsOn failed parent fails", {"dependsOn": [PARENT_FAILED]}),
    ok(
        "dependsOn failed parent, policy cancel",
        {"dependsOn": [PARENT_FAILED], "onDependencyFailure": "cancel"},
    ),
    ok(
        "dependsOn failed parent, policy ignore",
        {"dependsOn": [PARENT_FAILED, PARENT_DONE], "onDependencyFailure": "ignore"},
    ),
    ok("dependsOn unfinished parent blocks", {"dependsOn": ["@parent"]}, setup=[("parent", {})]),
    ok("empty dependsOn list", {"dependsOn": []}),
    ok("rate limit key and metadata", {"rateLimitKey": "tenant:1", "metadata": {"a": [1]}}),
    ok("null options take defaults", {"priority": None, "delay": None, "queue": None}),
    {"name": "null payload", "type": "t", "payload": None, "options": {}},
    {
        "name": "payload just under the limit",
        "type": "t",
        "payload": {"s": "x" * 292},
        "options": {},
    },
    # invalid
    bad("unknown option", {"bogus": 1}, "unknown option 'bogus'"),
    bad(
        "option twice", {"uniqueKey": "a", "unique_key": "b"}, "option 'unique_key' is given twice"
    ),
    bad(
        "delay and runAt",
        {"delay": 1, "runAt": "2030-01-01T00:00:00Z"},
        "give either delay or runAt, not both",
    ),
    bad("uniqueFor without key", {"uniqueFor": 5}, "uniqueFor needs a uniqueKey"),
    bad("onConflict without key", {"onConflict": "raise"}, "onConflict needs a uniqueKey"),
    bad(
        "empty unique key",
        {"uniqueKey": ""},
        "uniqueKey must be a string of 1 to 255 characters without NUL",
    ),
    bad(
        "numeric unique key",
        {"uniqueKey": 5},
        "uniqueKey must be a string of 1 to 255 characters without NUL",
    ),
    {
        **bad("empty type", {}, "job type must be a non-empty string of at most 100 characters"),
        "type": "",
    },
    {
        **bad("long type", {}, "job type must be a non-empty string of at most 100 characters"),
        "type": "x" * 101,
    },
    {
        **bad("control character in type", {}, "job type contains a control character"),
        "type": "a\tb",
    },
    *(
        {
            **bad(
                f"hostile type {name}",
                {},
                f"invalid job type {name!r}: use 1-100 characters A-Z a-z 0-9 . _ : - "
                "starting with a letter or digit",
            ),
            "type": name,
        }
        # The names tests/process/test_hostile_input.py sends through every other entry point.
        for name in (
            "x'; DROP TABLE jobs; --",
            "../../etc/passwd",
            "send email",
            "send/email",
            "-leading-dash",
            ".hidden",
            "caf\u00e9",
            'say "hi"',
            "x" * 99 + "!",
        )
    ),
    bad(
        "bad queue",
        {"queue": "Bad Queue"},
        "invalid queue name 'Bad Queue': use 1-100 characters a-z 0-9 . _ : - "
        "starting with a letter or digit",
    ),
    bad("numeric queue", {"queue": 5}, "queue name must be a string (got int)"),
    {**bad("payload not an object", {}, "payload must be a JSON object"), "payload": [1, 2]},
    {
        **bad(
            "payload over the limit",
            {},
            "payload is 301 bytes; the limit is 300 (JOBS_MAX_PAYLOAD_BYTES)",
        ),
        "payload": {"s": "x" * 293},
    },
    {
        **bad(
            "nested payload over the limit",
            {},
            "payload is 321 bytes; the limit is 300 (JOBS_MAX_PAYLOAD_BYTES)",
        ),
        "payload": {"a": [1, 2, {"b": "é" * 100, "c": []}], "d": {}, "e": "y" * 80},
    },
    # nesting: 100 levels (the outer object and 99 arrays) pass, 101 do not
    {**ok("payload nested to the depth limit"), "payload": {"x": nested(99)}},
    {
        **bad(
            "payload nested beyond the depth limit",
            {},
            "payload is nested too deeply (the limit is 100 levels)",
        ),
        "payload": {"x": [1, {"y": nested(99)}]},
    },
    bad(
        "metadata nested beyond the depth limit",
        {"metadata": {"x": nested(100)}},
        "metadata is nested too deeply (the limit is 100 levels)",
    ),
    bad(
        "unknown priority",
        {"priority": "urgent"},
        "unknown priority 'urgent': use critical, high, normal, low or an integer",
    ),
    bad(
        "fractional priority",
        {"priority": 1.5},
        "priority must be critical, high, normal, low or an integer",
    ),
    bad(
        "boolean priority",
        {"priority": True},
        "priority must be critical, high, normal, low or an integer",
    ),
    bad(
        "priority out of range",
        {"priority": 2000000},
        "priority must be between -1000000 and 1000000 (got 2000000)",
    ),
    bad(
        "attempts and maxRetries",
        {"attempts": 2, "maxRetries": 1},
        "give either attempts or maxRetries, not both",
    ),
    bad("attempts zero", {"attempts": 0}, "attempts must be at least 1 (got 0)"),
    bad("attempts fraction", {"attempts": 2.5}, "attempts must be a whole number (got 2.5)"),
    bad("attempts too many", {"attempts": 1001}, "attempts must be at most 1000 (got 1001)"),
    bad("attempts as text", {"attempts": "3"}, "attempts must be a number (got '3')"),
    bad(
        "maxRetries negative",
        {"maxRetries": -1},
        "maxRetries must be a non-negative number (got -1)",
    ),
    bad(
        "delay negative",
        {"delay": -0.4},
        "delay must be a non-negative number of milliseconds (got -0.4)",
    ),
    bad("delay as text", {"delay": "soon"}, "delay must be a number of milliseconds (got 'soon')"),
    bad("delay boolean", {"delay": False}, "delay must be a number of milliseconds (got False)"),
    bad("delay list", {"delay": [1, "a"]}, "delay must be a number of milliseconds (got [1, 'a'])"),
    bad(
        "delay too long",
        {"delay": 315360000001},
        "delay must be at most 315360000000 ms (got 315360000001)",
    ),
    bad(
        "runAt without offset",
        {"runAt": "2030-01-01T09:00:00"},
        "runAt needs a timezone offset, e.g. 2030-01-01T09:00:00+00:00",
    ),
    bad(
        "runAt words",
        {"runAt": "tomorrow"},
        "runAt must be an ISO-8601 time with an offset (got 'tomorrow')",
    ),
    bad(
        "runAt impossible date",
        {"runAt": "2030-02-30T00:00:00Z"},
        "runAt must be an ISO-8601 time with an offset (got '2030-02-30T00:00:00Z')",
    ),
    bad(
        "runAt number",
        {"runAt": 1700000000},
        "runAt must be an ISO-8601 time with an offset (got 1700000000)",
    ),
    bad("backoff empty list", {"backoff": []}, "backoff list must have 1 to 100 delays"),
    bad(
        "backoff negative step",
        {"backoff": [1, -5]},
        "backoff must be a non-negative number of milliseconds (got -5)",
    ),
    bad(
        "backoff unknown type",
        {"backoff": {"type": "linear"}},
        'backoff must be {"type": "exponential"|"fixed", "delay": ms} or a list of delays in ms',
    ),
    bad(
        "backoff extra field",
        {"backoff": {"type": "fixed", "delay": 1, "jitter": 2}},
        'backoff must be {"type": "exponential"|"fixed", "delay": ms} or a list of delays in ms',
    ),
    bad(
        "backoff delay text",
        {"backoff": {"type": "fixed", "delay": "1s"}},
        "backoff delay must be a number of milliseconds (got '1s')",
    ),
    bad(
        "backoff text",
        {"backoff": "exponential"},
        'backoff must be {"type": "exponential"|"fixed", "delay": ms} or a list of delays in ms',
    ),
    bad("timeout zero", {"timeout": 0}, "timeout must be at least 1 (got 0)"),
    bad(
        "timeout too long",
        {"timeout": 2592000001},
        "timeout must be at most 2592000000 ms (got 2592000001)",
    ),
    bad(
        "uniqueFor negative",
        {"uniqueKey": "k", "uniqueFor": -1},
        "uniqueFor must be a non-negative number of milliseconds (got -1)",
    ),
    bad(
        "uniqueStates text",
        {"uniqueKey": "k", "uniqueStates": "pending"},
        "uniqueStates must be a list of job statuses",
    ),
    bad(
        "uniqueStates empty",
        {"uniqueKey": "k", "uniqueStates": []},
        "uniqueStates must be a non-empty list of: pending, active, completed, failed, "
        "delayed, blocked, cancelled",
    ),
    bad(
        "uniqueStates unknown",
        {"uniqueKey": "k", "uniqueStates": ["pending", "done"]},
        "uniqueStates must be a non-empty list of: pending, active, completed, failed, "
        "delayed, blocked, cancelled (got 'done')",
    ),
    bad(
        "onConflict unknown",
        {"uniqueKey": "k", "onConflict": "ignore"},
        "onConflict must be 'return' or 'raise'",
    ),
    bad(
        "unique key held, onConflict raise",
        {"uniqueKey": "held2", "onConflict": "raise"},
        "unique key 'held2' is held by job {holder} (pending)",
        setup=[("holder", {"uniqueKey": "held2"})],
        sqlstate="23505",
    ),
    bad(
        "dependsOn object",
        {"dependsOn": {"id": 1}},
        "dependsOn must be a job id or a list of job ids",
    ),
    bad("dependsOn number", {"dependsOn": 5}, "dependsOn must be a job id or a list of job ids"),
    bad(
        "dependsOn bad id",
        {"dependsOn": ["not-a-uuid"]},
        "dependsOn has an invalid job id 'not-a-uuid'",
    ),
    bad("dependsOn numeric item", {"dependsOn": [12]}, "dependsOn has an invalid job id '12'"),
    bad(
        "dependsOn unknown job",
        {"dependsOn": [UNKNOWN]},
        f"dependsOn names an unknown job {UNKNOWN}",
    ),
    bad(
        "onDependencyFailure unknown",
        {"onDependencyFailure": "retry"},
        "onDependencyFailure must be one of fail, ignore, cancel",
    ),
    bad(
        "rateLimitKey too long",
        {"rateLimitKey": "k" * 256},
        "rateLimitKey must be a string of 1 to 255 characters without NUL",
    ),
    bad("metadata not an object", {"metadata": "x"}, "metadata must be a JSON object"),
]
