"""Hostile input on every surface: the REST API (a live `pgjobs server`), the CLI and the
Python API receive malformed JSON, wrong types, 10 MB payloads, nesting 10,000 deep,
NUL characters, lone surrogates, huge integers, negative and NaN delays, SQL
metacharacters and path traversal in queue names, type names and ids.

Every case gets a clear refusal — a 4xx JSON error from the API, one `error: ...` line
and exit status 2 from the CLI, a `PgJobsError` (never a TypeError or a database error)
from Python — no response is a 5xx, the server keeps serving, and a checksum of every
table shows the database unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pgjobs.app import App
from pgjobs.config import Settings
from pgjobs.errors import PgJobsError
from tests.opsdata import insert_job
from tests.pgjobs_cli import one_line_error_problem, run_against
from tests.webserver import running_server

TOKEN = "hostile-token"
DEEP = 10_000
TEN_MB = 10 * 1024 * 1024
HUGE_INT = "9" * 5000  # beyond Python's 4,300-digit int parsing limit
SQL_BITS = "x'; DROP TABLE jobs; --"
TRAVERSAL = "../../etc/passwd"

Conn = psycopg.Connection[dict[str, Any]]


def checksum(db: Conn) -> dict[str, str]:
    """Row count and an md5 over the text of every row, per table of the schema."""
    tables = [
        r["tablename"]
        for r in db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
    ]
    out = {}
    for table in tables:
        row = db.execute(
            sql.SQL(
                "SELECT count(*) AS n, "
                "coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') AS h FROM {} t"
            ).format(sql.Identifier(table))
        ).fetchone()
        assert row is not None
        out[table] = f"{row['n']}:{row['h']}"
    return out


@pytest.fixture
def seeded(db: Conn) -> Conn:
    """A database with jobs in several states, so 'unchanged' means something."""
    for status in ("pending", "failed", "completed", "delayed", "cancelled"):
        insert_job(db, status=status, type="seed")
    insert_job(db, status="failed", queue="emails", type="mail")
    return db


def deep(open_: str, close: str, leaf: str = "1") -> str:
    return open_ * DEEP + leaf + close * DEEP


# ---------------------------------------------------------------- REST API

# (label, method, path, raw body or JSON-able value or None)
ApiCase = tuple[str, str, str, Any]

API_CASES: list[ApiCase] = [
    # malformed JSON
    ("truncated", "POST", "/api/jobs", b'{"type": "a",'),
    ("not json", "POST", "/api/jobs", b"not json"),
    ("trailing garbage", "POST", "/api/jobs", b'{"type": "a"}}'),
    ("empty body", "POST", "/api/jobs", b""),
    ("invalid utf-8", "POST", "/api/jobs", b'{"type": "\xff\xfe"}'),
    ("NaN literal", "POST", "/api/jobs", b'{"type": "a", "options": {"delay": NaN}}'),
    ("Infinity literal", "POST", "/api/jobs", b'{"type": "a", "options": {"delay": Infinity}}'),
    ("single quotes", "POST", "/api/jobs", b"{'type': 'a'}"),
    ("bulk truncated", "POST", "/api/jobs/bulk", b'{"jobs": [{"type": "a"}'),
    ("schedule malformed", "POST", "/api/schedules", b'{"name": '),
    # wrong types
    ("body array", "POST", "/api/jobs", []),
    ("body string", "POST", "/api/jobs", "send-email"),
    ("body number", "POST", "/api/jobs", 42),
    ("body null", "POST", "/api/jobs", None),
    ("type number", "POST", "/api/jobs", {"type": 123}),
    ("type null", "POST", "/api/jobs", {"type": None}),
    ("type list", "POST", "/api/jobs", {"type": ["a"]}),
    ("type object", "POST", "/api/jobs", {"type": {"a": 1}}),
    ("queue number", "POST", "/api/jobs", {"type": "a", "queue": 5}),
    ("payload string", "POST", "/api/jobs", {"type": "a", "payload": "text"}),
    ("payload list", "POST", "/api/jobs", {"type": "a", "payload": [1, 2]}),
    ("options string", "POST", "/api/jobs", {"type": "a", "options": "fast"}),
    ("priority object", "POST", "/api/jobs", {"type": "a", "options": {"priority": {"x": 1}}}),
    ("attempts string", "POST", "/api/jobs", {"type": "a", "options": {"attempts": "3"}}),
    ("attempts fraction", "POST", "/api/jobs", {"type": "a", "options": {"attempts": 1.5}}),
    ("delay bool", "POST", "/api/jobs", {"type": "a", "options": {"delay": True}}),
    ("backoff string", "POST", "/api/jobs", {"type": "a", "options": {"backoff": "fast"}}),
    ("dependsOn number", "POST", "/api/jobs", {"type": "a", "options": {"dependsOn": 5}}),
    ("bulk jobs object", "POST", "/api/jobs/bulk", {"jobs": {"type": "a"}}),
    ("bulk item string", "POST", "/api/jobs/bulk", {"jobs": [{"type": "a"}, "b"]}),
    ("schedule cron number", "POST", "/api/schedules", {"name": "n", "type": "a", "cron": 5}),
    # 10 MB payloads
    ("10 MB job", "POST", "/api/jobs", {"type": "a", "payload": {"blob": "x" * TEN_MB}}),
    (
        "10 MB in bulk",
        "POST",
        "/api/jobs/bulk",
        {"jobs": [{"type": "a", "payload": {"blob": "x" * TEN_MB}}]},
    ),
    ("10 MB schedule", "POST", "/api/schedules", {"name": "x" * TEN_MB}),
    # nesting 10,000 deep
    ("deep payload", "POST", "/api/jobs", ('{"type": "a", "payload": ' + deep('{"a":', "}") + "}")),
    ("deep options", "POST", "/api/jobs", '{"type": "a", "options": ' + deep("[", "]") + "}"),
    ("deep body", "POST", "/api/jobs", deep("[", "]")),
    ("deep bulk", "POST", "/api/jobs/bulk", '{"jobs": ' + deep("[", "]") + "}"),
    # NUL characters
    ("NUL in type", "POST", "/api/jobs", {"type": "a\u0000b"}),
    ("NUL in queue", "POST", "/api/jobs", {"type": "a", "queue": "de\u0000fault"}),
    ("NUL in payload value", "POST", "/api/jobs", {"type": "a", "payload": {"k": "\u0000"}}),
    ("NUL in payload key", "POST", "/api/jobs", {"type": "a", "payload": {"\u0000": 1}}),
    ("NUL in unique key", "POST", "/api/jobs", {"type": "a", "options": {"uniqueKey": "\u0000"}}),
    ("NUL in metadata", "POST", "/api/jobs", {"type": "a", "options": {"metadata": {"m": "\0"}}}),
    (
        "NUL in schedule name",
        "POST",
        "/api/schedules",
        {"name": "\u0000", "type": "a", "cron": "* * * * *"},
    ),
    # lone surrogates (escaped in JSON: the bytes are valid UTF-8)
    ("surrogate in type", "POST", "/api/jobs", b'{"type": "a\\ud800"}'),
    ("surrogate in queue", "POST", "/api/jobs", b'{"type": "a", "queue": "\\udfff"}'),
    ("surrogate in payload", "POST", "/api/jobs", b'{"type": "a", "payload": {"k": "\\ud800"}}'),
    ("surrogate in key", "POST", "/api/jobs", b'{"type": "a", "payload": {"\\udc00": 1}}'),
    (
        "surrogate in metadata",
        "POST",
        "/api/jobs",
        b'{"type": "a", "options": {"metadata": {"m": "\\ud800"}}}',
    ),
    # huge integers
    (
        "huge priority",
        "POST",
        "/api/jobs",
        '{"type": "a", "options": {"priority": ' + HUGE_INT + "}}",
    ),
    (
        "huge payload number",
        "POST",
        "/api/jobs",
        '{"type": "a", "payload": {"n": ' + HUGE_INT + "}}",
    ),
    ("priority 2**63", "POST", "/api/jobs", {"type": "a", "options": {"priority": 2**63}}),
    ("attempts 2**64", "POST", "/api/jobs", {"type": "a", "options": {"attempts": 2**64}}),
    ("timeout 10**20", "POST", "/api/jobs", {"type": "a", "options": {"timeout": 10**20}}),
    ("delay 1e400", "POST", "/api/jobs", b'{"type": "a", "options": {"delay": 1e400}}'),
    # negative and NaN delays
    ("delay -1", "POST", "/api/jobs", {"type": "a", "options": {"delay": -1}}),
    ("delay -0.5", "POST", "/api/jobs", {"type": "a", "options": {"delay": -0.5}}),
    ("delay -1e400", "POST", "/api/jobs", b'{"type": "a", "options": {"delay": -1e400}}'),
    ("delay 'NaN'", "POST", "/api/jobs", {"type": "a", "options": {"delay": "NaN"}}),
    ("runAt NaN", "POST", "/api/jobs", {"type": "a", "options": {"runAt": "NaN"}}),
    ("runAt -infinity", "POST", "/api/jobs", {"type": "a", "options": {"runAt": "-infinity"}}),
    ("runAt no zone", "POST", "/api/jobs", {"type": "a", "options": {"runAt": "2030-01-01T00:00"}}),
    (
        "backoff -5",
        "POST",
        "/api/jobs",
        {"type": "a", "options": {"backoff": {"type": "fixed", "delay": -5}}},
    ),
    ("backoff list NaN", "POST", "/api/jobs", b'{"type": "a", "options": {"backoff": [NaN]}}'),
    # SQL metacharacters and path traversal: queue names, type names, ids
    ("SQL in queue", "POST", "/api/jobs", {"type": "a", "queue": SQL_BITS}),
    ("traversal in queue", "POST", "/api/jobs", {"type": "a", "queue": TRAVERSAL}),
    ("SQL in type", "POST", "/api/jobs", {"type": SQL_BITS}),
    ("traversal in type", "POST", "/api/jobs", {"type": TRAVERSAL}),
    ("SQL in dependsOn", "POST", "/api/jobs", {"type": "a", "options": {"dependsOn": [SQL_BITS]}}),
    ("SQL in bulk", "POST", "/api/jobs/bulk", {"jobs": [{"type": "a", "queue": SQL_BITS}]}),
    ("SQL job id", "GET", f"/api/jobs/{quote(SQL_BITS)}", None),
    ("traversal job id", "GET", "/api/jobs/..%2F..%2Fetc%2Fpasswd", None),
    ("traversal job id raw", "GET", "/api/jobs/../../etc/passwd", None),
    ("SQL retry", "POST", f"/api/jobs/{quote(SQL_BITS)}/retry", None),
    ("SQL cancel", "POST", f"/api/jobs/{quote(SQL_BITS)}/cancel", None),
    ("SQL delete", "DELETE", f"/api/jobs/{quote(SQL_BITS)}", None),
    ("NUL job id", "GET", "/api/jobs/%00", None),
    ("surrogate job id", "GET", "/api/jobs/%ED%A0%80", None),
    ("huge job id", "GET", "/api/jobs/" + "a" * 10_000, None),
    ("SQL pause", "POST", f"/api/queues/{quote(SQL_BITS)}/pause", None),
    ("traversal pause", "POST", "/api/queues/..%2F..%2Fetc/pause", None),
    ("SQL resume", "POST", f"/api/queues/{quote(SQL_BITS)}/resume", None),
    (
        "SQL queue limit",
        "PUT",
        f"/api/queues/{quote(SQL_BITS)}/limit",
        {"max": 1, "duration": 1000},
    ),
    ("SQL schedule name", "GET", f"/api/schedules/{quote(SQL_BITS)}", None),
    ("traversal schedule", "DELETE", "/api/schedules/..%2F..%2Fetc", None),
    ("SQL job wait", "GET", f"/api/jobs/{quote(SQL_BITS)}/wait", None),
    # query parameters
    ("SQL queue filter", "GET", f"/api/jobs?queue={quote(SQL_BITS)}", None),
    ("SQL type filter", "GET", f"/api/jobs?type={quote(SQL_BITS)}", None),
    ("traversal type filter", "GET", f"/api/jobs?type={quote(TRAVERSAL)}", None),
    ("bad status filter", "GET", "/api/jobs?status=%27%3B--", None),
    ("NUL filter", "GET", "/api/jobs?queue=%00", None),
    ("huge limit", "GET", f"/api/jobs?limit={HUGE_INT}", None),
    ("NaN limit", "GET", "/api/jobs?limit=NaN", None),
    ("garbage cursor", "GET", f"/api/jobs?cursor={quote(SQL_BITS)}", None),
    ("NaN created_after", "GET", "/api/jobs?created_after=NaN", None),
    ("stats hours NaN", "GET", "/api/stats?hours=NaN", None),
    ("stats hours inf", "GET", "/api/stats?hours=inf", None),
    ("stats hours -1", "GET", "/api/stats?hours=-1", None),
    ("stats hours huge", "GET", f"/api/stats?hours={HUGE_INT}", None),
    ("stats SQL queue", "GET", f"/api/stats?queue={quote(SQL_BITS)}", None),
    ("events SQL queue", "GET", f"/api/events?queue={quote(SQL_BITS)}", None),
]


def encode(body: Any) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    if isinstance(body, str) and body[:1] in "{[":
        return body.encode()
    return json.dumps(body).encode()


@pytest.fixture
def live_server(db_url: str) -> Iterator[str]:
    with running_server(db_url, JOBS_API_TOKEN=TOKEN, LOG_LEVEL="warning") as base:
        yield base


def test_rest_api_refuses_hostile_input(live_server: str, seeded: Conn) -> None:
    before = checksum(seeded)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    problems: list[str] = []
    # A read timeout: an event stream accepted by mistake would never end.
    timeout = httpx.Timeout(60, read=20)
    with httpx.Client(base_url=live_server, headers=headers, timeout=timeout) as http:
        for index, (label, method, path, body) in enumerate(API_CASES):
            try:
                response = http.request(method, path, content=encode(body))
            except httpx.TimeoutException:
                problems.append(f"{label}: {method} {path[:80]} -> no answer in time")
                continue
            problem = _api_problem(response)
            if problem:
                problems.append(f"{label}: {method} {path[:80]} -> {problem}")
            if index % 10 == 9:
                # The server keeps serving between the blows.
                assert http.get("/health").status_code == 200, label
        assert not problems, "\n".join(problems)
        assert http.get("/health").status_code == 200
        assert http.get("/api/stats").status_code == 200
        listed = http.get("/api/jobs", params={"limit": 100})
        assert listed.status_code == 200 and len(listed.json()["jobs"]) == 6
    assert checksum(seeded) == before


def _api_problem(response: httpx.Response) -> str | None:
    if not 400 <= response.status_code < 500:
        return f"status {response.status_code}: {response.text[:200]}"
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"not a JSON error: {response.text[:200]}"
    if set(error) != {"code", "message"} or not error["message"] or "\n" in error["message"]:
        return f"unclear error: {error}"
    if "Traceback" in response.text:
        return "a traceback in the response"
    return None


# ---------------------------------------------------------------- CLI

CLI_CASES: list[tuple[str, list[str]]] = [
    ("malformed payload", ["enqueue", "a", "--payload", '{"a": ']),
    ("payload not an object", ["enqueue", "a", "--payload", "[1, 2]"]),
    ("deep payload", ["enqueue", "a", "--payload", deep('{"a":', "}")]),
    ("huge int payload", ["enqueue", "a", "--payload", '{"n": ' + HUGE_INT + "}"]),
    ("NaN payload", ["enqueue", "a", "--payload", '{"n": NaN}']),
    ("NUL payload", ["enqueue", "a", "--payload", '{"k": "\\u0000"}']),
    ("surrogate payload", ["enqueue", "a", "--payload", '{"k": "\\ud800"}']),
    ("delay NaN", ["enqueue", "a", "--delay", "NaN"]),
    ("delay negative", ["enqueue", "a", "--delay", "-5"]),
    ("delay huge", ["enqueue", "a", "--delay", HUGE_INT[:400]]),
    ("attempts text", ["enqueue", "a", "--attempts", "three"]),
    ("attempts 2**64", ["enqueue", "a", "--attempts", str(2**64)]),
    ("priority huge", ["enqueue", "a", "--priority", HUGE_INT[:400]]),
    ("priority SQL", ["enqueue", "a", "--priority", SQL_BITS]),
    ("SQL queue", ["enqueue", "a", "--queue", SQL_BITS]),
    ("traversal queue", ["enqueue", "a", "--queue", TRAVERSAL]),
    ("SQL type", ["enqueue", SQL_BITS]),
    ("traversal type", ["enqueue", TRAVERSAL]),
    ("empty type", ["enqueue", ""]),
    ("missing type", ["enqueue"]),
    ("SQL id get", ["get", SQL_BITS]),
    ("traversal id get", ["get", TRAVERSAL]),
    ("SQL id cancel", ["cancel", SQL_BITS]),
    ("SQL id retry", ["retry", "--id", SQL_BITS]),
    ("SQL id delete", ["delete", SQL_BITS]),
    ("SQL pause", ["pause", SQL_BITS]),
    ("traversal resume", ["resume", TRAVERSAL]),
    ("SQL stats queue", ["stats", "--queue", SQL_BITS]),
    ("NaN stats time", ["stats", "--time", "NaN"]),
    ("SQL jobs type", ["jobs", "--type", SQL_BITS]),
    ("SQL jobs status", ["jobs", "--status", SQL_BITS]),
    ("unknown command", ["'; DROP TABLE jobs; --"]),
    ("SQL worker queue", ["worker", SQL_BITS]),
    ("traversal worker app", ["worker", "--app", "../../etc/passwd:app"]),
]


def test_cli_refuses_hostile_input(db_url: str, seeded: Conn) -> None:
    before = checksum(seeded)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: run_against(db_url, *case[1]), CLI_CASES))
    problems = []
    for (label, _args), result in zip(CLI_CASES, results, strict=True):
        problem = one_line_error_problem(result)
        if problem:
            problems.append(f"{label}: {problem}")
    assert not problems, "\n".join(problems)
    assert checksum(seeded) == before


# ---------------------------------------------------------------- Python API

Call = Callable[[App], Any]

PYTHON_CASES: list[tuple[str, Call]] = [
    ("type number", lambda app: app.create_sync(123)),  # type: ignore[arg-type]
    ("type None", lambda app: app.create_sync(None)),  # type: ignore[arg-type]
    ("SQL type", lambda app: app.create_sync(SQL_BITS)),
    ("traversal type", lambda app: app.create_sync(TRAVERSAL)),
    ("NUL type", lambda app: app.create_sync("a\x00b")),
    ("surrogate type", lambda app: app.create_sync("a\ud800")),
    ("SQL queue", lambda app: app.create_sync("a", queue=SQL_BITS)),
    ("traversal queue", lambda app: app.create_sync("a", queue=TRAVERSAL)),
    ("queue number", lambda app: app.create_sync("a", queue=5)),  # type: ignore[arg-type]
    ("payload list", lambda app: app.create_sync("a", [1, 2])),
    ("payload object()", lambda app: app.create_sync("a", {"o": object()})),
    ("payload 10 MB", lambda app: app.create_sync("a", {"blob": "x" * TEN_MB})),
    ("payload deep", lambda app: app.create_sync("a", _deep_dict())),
    ("payload circular", lambda app: app.create_sync("a", _circular())),
    ("payload NUL", lambda app: app.create_sync("a", {"k": "\x00"})),
    ("payload NUL key", lambda app: app.create_sync("a", {"\x00": 1})),
    ("payload surrogate", lambda app: app.create_sync("a", {"k": "\udfff"})),
    ("payload NaN", lambda app: app.create_sync("a", {"n": math.nan})),
    ("payload inf", lambda app: app.create_sync("a", {"n": math.inf})),
    ("payload bytes", lambda app: app.create_sync("a", {"b": b"\x00"})),
    ("priority huge", lambda app: app.create_sync("a", priority=10**400)),
    ("priority SQL", lambda app: app.create_sync("a", priority=SQL_BITS)),
    ("priority float", lambda app: app.create_sync("a", priority=1.5)),  # type: ignore[arg-type]
    ("attempts 2**64", lambda app: app.create_sync("a", attempts=2**64)),
    ("attempts 0", lambda app: app.create_sync("a", attempts=0)),
    ("attempts str", lambda app: app.create_sync("a", attempts="3")),
    ("delay NaN", lambda app: app.create_sync("a", delay=math.nan)),
    ("delay inf", lambda app: app.create_sync("a", delay=math.inf)),
    ("delay -1", lambda app: app.create_sync("a", delay=-1)),
    ("delay -timedelta", lambda app: app.create_sync("a", delay=timedelta(seconds=-1))),
    ("delay huge", lambda app: app.create_sync("a", delay=10**400)),
    ("delay str", lambda app: app.create_sync("a", delay="5")),
    ("timeout 0", lambda app: app.create_sync("a", timeout=0)),
    ("run_at NaN", lambda app: app.create_sync("a", run_at="NaN")),
    ("run_at naive", lambda app: app.create_sync("a", run_at="2030-01-01T00:00:00")),
    ("backoff NaN", lambda app: app.create_sync("a", backoff=[math.nan])),
    ("backoff negative", lambda app: app.create_sync("a", backoff={"type": "fixed", "delay": -1})),
    ("unique key NUL", lambda app: app.create_sync("a", unique_key="\x00")),
    ("unique key huge", lambda app: app.create_sync("a", unique_key="k" * 100_000)),
    ("depends_on SQL", lambda app: app.create_sync("a", depends_on=[SQL_BITS])),
    ("unknown option", lambda app: app.create_sync("a", sql=SQL_BITS)),
    ("bulk SQL queue", lambda app: app.create_many_sync([{"type": "a", "queue": SQL_BITS}])),
    ("bulk not a dict", lambda app: app.create_many_sync(["a"])),  # type: ignore[list-item]
    (
        "bulk NaN delay",
        lambda app: app.create_many_sync([{"type": "a", "options": {"delay": math.nan}}]),
    ),
    ("get SQL id", lambda app: app.get_sync(SQL_BITS)),
    ("get traversal id", lambda app: app.get_sync(TRAVERSAL)),
    ("get NUL id", lambda app: app.get_sync("\x00")),
    ("get huge id", lambda app: app.get_sync("f" * 100_000)),
    ("get number id", lambda app: app.get_sync(12345)),  # type: ignore[arg-type]
    ("cancel SQL id", lambda app: app.cancel_sync(SQL_BITS)),
    ("retry SQL id", lambda app: app.retry_sync(SQL_BITS)),
    ("schedule SQL name", lambda app: app.schedule_sync(SQL_BITS, "a", "* * * * *")),
    ("schedule traversal name", lambda app: app.schedule_sync(TRAVERSAL, "a", "* * * * *")),
    ("schedule SQL cron", lambda app: app.schedule_sync("n", "a", SQL_BITS)),
    ("schedule SQL type", lambda app: app.schedule_sync("n", SQL_BITS, "* * * * *")),
    (
        "schedule NUL timezone",
        lambda app: app.schedule_sync("n", "a", "* * * * *", timezone="\x00"),
    ),
    (
        "schedule traversal timezone",
        lambda app: app.schedule_sync("n", "a", "* * * * *", timezone="../../../etc/passwd"),
    ),
    ("get schedule SQL", lambda app: app.get_schedule_sync(SQL_BITS)),
    ("delete schedule traversal", lambda app: app.delete_schedule_sync(TRAVERSAL)),
]


def _deep_dict() -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(DEEP):
        value = {"a": value}
    return value


def _circular() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


def test_python_api_refuses_hostile_input(settings: Settings, seeded: Conn) -> None:
    before = checksum(seeded)
    app = App(settings)
    problems = []
    try:
        for label, call in PYTHON_CASES:
            try:
                call(app)
            except PgJobsError as exc:
                message = str(exc)
                if not message or "\n" in message or len(message) > 2000:
                    problems.append(f"{label}: unclear message {message[:200]!r}")
            except Exception as exc:  # anything else is a bug: a TypeError, a DB error
                problems.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]}")
            else:
                problems.append(f"{label}: accepted")
    finally:
        app.close_sync()
    assert not problems, "\n".join(problems)
    assert checksum(seeded) == before


def test_checksum_sees_a_change(db: Conn) -> None:
    """The 'database unchanged' check would notice a single changed field."""
    job = insert_job(db, status="failed")
    before = checksum(db)
    with psycopg.connect(db.info.dsn, autocommit=True, row_factory=dict_row) as other:
        other.execute("UPDATE jobs SET priority = priority + 1 WHERE id = %s", (job,))
    assert checksum(db) != before
