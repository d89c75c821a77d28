"""Every SQL statement of pgjobs, by name.

Statements live in the `*.sql` files beside this module, each introduced by a
`-- name: NAME` line; the comments above a statement say why it is written the way it
is. Only the modules that execute SQL import this, and they look statements up by
name, so no SQL is ever built from strings at run time.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@cache
def _load() -> dict[str, str]:
    statements: dict[str, str] = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        text = entry.read_text(encoding="utf-8")
        parts = _NAME.split(text)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in statements:
                raise RuntimeError(f"SQL statement {name!r} is defined twice ({entry.name})")
            statements[name] = body.strip().rstrip(";")
    return statements


def query(name: str) -> LiteralString:
    """The statement called `name`."""
    try:
        # mypy treats LiteralString as str; the statements are constants from our files.
        return _load()[name]
    except KeyError:
        raise KeyError(f"no SQL statement named {name!r}") from None


def names() -> list[str]:
    return sorted(_load())
