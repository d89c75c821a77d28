"""How deeply nested a stored JSON value may be, and reading values that break the rule.

Every producer (Python, REST, CLI, the SQL functions) refuses a payload or metadata
nested deeper than MAX_JSON_DEPTH. A value that got into the database anyway (an UPDATE
by any database login, an older install) must not take down whoever reads it: Python's
decoder raises RecursionError about 1,000 levels down, and code that walks a decoded
value (masking secrets, indenting for the dashboard) fails far earlier. So every
connection pgjobs opens decodes json/jsonb with `load_json`, which turns such a value
into an `UndecodableJson` string instead of raising.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pgjobs.validation import MAX_JSON_DEPTH

_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class UndecodableJson(str):
    """A stored JSON value pgjobs did not decode. A str saying so, so that it
    serialises, renders and logs as that explanation wherever a value may appear;
    `reason` is the cause alone."""

    reason: str

    def __new__(cls, display: str, reason: str) -> UndecodableJson:
        value = super().__new__(cls, display)
        value.reason = reason
        return value


def too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON `text` nests containers more than `limit` levels deep."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case: too few brackets to be too deep
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > limit:
                return True
        elif token in ("]", "}"):
            depth -= 1
        # anything else is a string: brackets inside it do not nest
    return False


def depth_error(what: str) -> str:
    """The one message every producer gives for a value nested too deeply."""
    return f"{what} is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)"


def load_json(data: bytes | bytearray | memoryview | str) -> Any:
    """json.loads for values read from the database; never raises."""
    # The server sends UTF-8 text; decoding first lets one scan serve both steps.
    raw = data if isinstance(data, str) else bytes(data).decode("utf-8", "replace")
    if too_deep(raw):
        reason = f"nested more than {MAX_JSON_DEPTH} levels deep"
        return UndecodableJson(f"(too deeply nested to display: {reason})", reason)
    try:
        return json.loads(raw)
    except (RecursionError, ValueError) as exc:
        # e.g. a number beyond Python's integer-digit limit
        reason = f"not decodable ({str(exc)[:200]})"
        return UndecodableJson(f"(cannot display: {reason})", reason)
