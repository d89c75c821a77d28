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
# `{{other_name}}` inside a statement stands for the text of the block `other_name`, so
# statements that share steps (finish, claim, finish-and-claim) are written once.
_INCLUDE = re.compile(r"\{\{([a-z_][a-z0-9_]*)\}\}")


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
            statements[name] = _strip_comments(body).strip().rstrip(";")
    return {name: _expand(name, statements, ()) for name in statements}


def _strip_comments(body: str) -> str:
    """Drop whole-line comments (the notes above a statement), keep the SQL."""
    return "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))


def _expand(name: str, statements: dict[str, str], seen: tuple[str, ...]) -> str:
    if name in seen:
        raise RuntimeError(f"SQL block {name!r} includes itself")
    if name not in statements:
        raise RuntimeError(f"SQL block {seen[-1]!r} includes unknown block {name!r}")
    return _INCLUDE.sub(lambda m: _expand(m.group(1), statements, (*seen, name)), statements[name])


def query(name: str) -> LiteralString:
    """The statement called `name`."""
    try:
        # mypy treats LiteralString as str; the statements are constants from our files.
        return _load()[name]
    except KeyError:
        raise KeyError(f"no SQL statement named {name!r}") from None


def names() -> list[str]:
    return sorted(_load())
