"""The API contract has one home: the OpenAPI document matches the routes the server
serves, shapes become the schemas the handlers enforce, and each shared rule
(pgjobs.validation) is written once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

import pgjobs
from pgjobs import validation
from pgjobs.config import Settings
from pgjobs.contract import shapes
from pgjobs.contract.jsonschema import SchemaBuilder, check_fields, required_fields
from pgjobs.contract.operations import OPERATIONS
from pgjobs.errors import ValidationError
from pgjobs.web import api, create_app
from pgjobs.web.openapi import build_document, openapi_document
from tests.paths import ROOT

pytestmark = pytest.mark.anyio
PACKAGE = Path(pgjobs.__file__).resolve().parent
METHODS = {"get", "post", "put", "patch", "delete"}


def served_operations(settings: Settings) -> set[tuple[str, str]]:
    """(METHOD, path) of every route of the web app under /api, plus the service routes."""
    web = create_app(settings)
    out = set()
    for route in web.routes:
        if isinstance(route, Route) and (
            route.path.startswith("/api") or route.path in ("/health", "/metrics", "/openapi.json")
        ):
            out |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    return out


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


async def test_every_api_route_is_documented_and_every_documented_path_is_routed() -> None:
    settings = Settings(dashboard_enabled=True, dashboard_path="/")
    web = create_app(settings)
    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        response = await http.get("/openapi.json")
    assert response.status_code == 200, response.text
    document = response.json()
    served = served_operations(settings)
    assert len(served) >= 25
    assert documented_operations(document) == served
    for path, item in document["paths"].items():
        declared = [p["name"] for p in item.get("parameters", []) if p["in"] == "path"]
        assert declared == re.findall(r"\{(\w+)\}", path), path


def test_the_document_refuses_an_undeclared_route_and_an_unrouted_declaration() -> None:
    async def nothing() -> None: ...

    with pytest.raises(LookupError, match="GET /api/secret has no declared operation"):
        build_document([*api.routes(), Route("/api/secret", nothing, methods=["GET"])])
    without_workers = [r for r in api.routes() if getattr(r, "path", "") != "/api/workers"]
    with pytest.raises(LookupError, match="/api/workers"):
        build_document(without_workers)


def test_only_health_is_open_and_every_operation_answers_its_errors() -> None:
    document = openapi_document(Settings())
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            assert (operation.get("security") == []) == (path == "/health"), path
            if path != "/health":
                assert {"401", "503"} <= set(operation["responses"]), (method, path)
            for status, answer in operation["responses"].items():
                if int(status) >= 400 and path != "/health":
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}
    operation_ids = [op.operation_id for op in OPERATIONS]
    assert len(operation_ids) == len(set(operation_ids))


def test_request_shapes_are_closed_and_response_shapes_open() -> None:
    schemas = openapi_document(Settings())["components"]["schemas"]
    for name in ("JobCreate", "JobOptions", "BackoffCurve", "FlowJob", "QueueLimitSet"):
        assert schemas[name]["additionalProperties"] is False, name
    for name in ("Job", "JobSummary", "Stats", "Schedule", "Error"):
        assert "additionalProperties" not in schemas[name], name
    builder = SchemaBuilder()
    builder.ref(shapes.JobCreate, request=True)
    with pytest.raises(TypeError, match="both in a request and a response"):
        builder.ref(shapes.JobOptions, request=False)


def test_required_fields_follow_required_notrequired_and_totality() -> None:
    assert required_fields(shapes.JobCreate) == ["type"]
    assert required_fields(shapes.BackoffCurve) == ["type"]
    assert required_fields(shapes.QueueLimitSet) == ["max", "duration"]
    assert set(required_fields(shapes.ScheduleCreate)) == {"name", "type", "cron"}
    assert required_fields(shapes.ScheduleChange) == []
    assert "waiting" in required_fields(shapes.QueueStats)
    assert "total" not in required_fields(shapes.QueueStats)


def test_check_fields_names_the_first_unknown_then_the_first_missing_field() -> None:
    with pytest.raises(ValidationError, match="unknown field 'a'") as unknown:
        check_fields({"z": 1, "a": 2, "max": 1}, shapes.QueueLimitSet)
    assert unknown.value.field == "a"
    with pytest.raises(ValidationError, match="duration is required"):
        check_fields({"max": 1}, shapes.QueueLimitSet)
    check_fields({"max": 1, "duration": 1000}, shapes.QueueLimitSet)


def test_schema_constraints_come_from_the_shared_rules() -> None:
    schemas = openapi_document(Settings())["components"]["schemas"]
    queue = schemas["JobCreate"]["properties"]["queue"]
    assert queue["pattern"] == validation.QUEUE_NAME_PATTERN
    assert schemas["BulkCreate"]["properties"]["jobs"]["maxItems"] == validation.MAX_BULK
    assert schemas["JobPage"]["properties"]["limit"]["maximum"] == validation.MAX_LIMIT
    name = schemas["ScheduleCreate"]["properties"]["name"]
    assert name["pattern"] == validation.SCHEDULE_NAME_PATTERN
    assert re.fullmatch(validation.QUEUE_NAME_PATTERN.strip("^$"), "pgjobs_longhorizon_bench")


# Fragments that would give away a copy of a shared pattern, however it is quoted.
COPIES = {
    "QUEUE_NAME_PATTERN": ("[a-z0-9][a-z0-9._:-]", "a-z0-9._:-]{0,99}"),
    "JOB_TYPE_PATTERN": ("[A-Za-z0-9][A-Za-z0-9._:-]",),
    "SCHEDULE_NAME_PATTERN": ("[A-Za-z0-9._:@-]",),
}


def test_each_shared_pattern_is_written_once_in_the_package() -> None:
    """Python, the CLI and the web import pgjobs.validation; nothing else in the package
    (code, templates, scripts) spells a pattern out."""
    home = PACKAGE / "validation.py"
    files = [p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in {".py", ".html", ".js"}]
    files += [p for p in (ROOT / "templates").rglob("*") if p.is_file()]
    assert len(files) > 50
    for name, fragments in COPIES.items():
        pattern = getattr(validation, name)
        for path in files:
            if path == home:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for fragment in (pattern, *fragments):
                assert fragment not in text, f"{path} repeats {name}: import pgjobs.validation"
        assert home.read_text().count(pattern) == 1


def test_sql_spells_the_patterns_exactly_as_python() -> None:
    """SQL cannot import Python: every queue-name or job-type check in schema.sql must
    be the very pattern of pgjobs.validation."""
    sql = (ROOT / "schema.sql").read_text()
    checks = re.findall(r"!~ '(\^\[[^']*\$)'", sql)
    queue = [c for c in checks if c.startswith("^[a-z0-9]")]
    types = [c for c in checks if c.startswith("^[A-Za-z0-9]")]
    assert queue and types
    assert set(queue) == {validation.QUEUE_NAME_PATTERN}
    assert set(types) == {validation.JOB_TYPE_PATTERN}
    names = [c for c in checks if "._:" in c]
    assert len(queue) + len(types) == len(names)
