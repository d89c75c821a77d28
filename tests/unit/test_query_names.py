"""Every named SQL statement in pgjobs/queries/*.sql is used by the code, and every
statement name the code asks for exists.

Statements are looked up by name with `pgjobs.queries.query("name")`, sometimes through
a helper that takes the name as an argument (`_one(conn, "limits_get", ...)`), so a name
counts as used when it appears as a string literal anywhere in the package, or when
another statement includes it as a `{{block}}`."""

from __future__ import annotations

import ast
import re
from functools import cache
from importlib import resources
from pathlib import Path

import pgjobs
from pgjobs.queries import names, query

PACKAGE = Path(pgjobs.__file__).parent
INCLUDE = re.compile(r"\{\{([a-z_][a-z0-9_]*)\}\}")
NAME_SHAPE = re.compile(r"^[a-z_][a-z0-9_]*$")


@cache
def package_sources() -> dict[Path, ast.Module]:
    return {
        path: ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def string_literals(tree: ast.Module) -> set[str]:
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def imports_query(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module == "pgjobs.queries"
        and any(alias.name == "query" and alias.asname is None for alias in node.names)
        for node in ast.walk(tree)
    )


def literal_query_calls(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, name) of every `query("name")` call with a literal argument, in a module
    that imports pgjobs.queries.query (others may have a `query` of their own)."""
    found: list[tuple[int, str]] = []
    if not imports_query(tree):
        return found
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "query"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def included_blocks() -> set[str]:
    blocks: set[str] = set()
    for entry in resources.files("pgjobs.queries").iterdir():
        if entry.name.endswith(".sql"):
            blocks |= set(INCLUDE.findall(entry.read_text(encoding="utf-8")))
    return blocks


def test_every_named_statement_is_used_by_the_code() -> None:
    literals: set[str] = set()
    for tree in package_sources().values():
        literals |= string_literals(tree)
    unused = sorted(set(names()) - literals - included_blocks())
    assert not unused, f"statements in pgjobs/queries/*.sql that no code uses: {unused}"


def test_every_statement_the_code_names_exists() -> None:
    known = set(names())
    missing = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {name!r}"
        for path, tree in package_sources().items()
        for line, name in literal_query_calls(tree)
        if name not in known
    ]
    assert not missing, f"query() names without a statement: {missing}"


def test_the_scan_sees_the_lookups() -> None:
    """The checks above would pass vacuously if the scan missed the call sites."""
    calls = [name for tree in package_sources().values() for _, name in literal_query_calls(tree)]
    assert "claim_jobs" in calls and len(calls) > 20
    assert all(NAME_SHAPE.match(name) for name in names())
    assert query("claim_jobs").lstrip().upper().startswith(("WITH", "SELECT", "UPDATE"))
