"""Reading a built-in job's payload: each helper returns a typed value or raises
`Discard("<field>: <problem>")`, so a bad payload fails its job at once, naming the field,
instead of being retried."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pgjobs.errors import Discard, bad_field

_MISSING = object()


# The short name every type module uses (`p.bad(...)`); defined in errors, below the
# backup helpers that report the same way.
bad = bad_field


def as_object(payload: Any) -> dict[str, Any]:
    """The payload as a dict (a missing payload is an empty one)."""
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise Discard(f"payload: must be a JSON object, not {_kind(payload)}")
    return dict(payload)


def unknown_fields(p: Mapping[str, Any], known: frozenset[str]) -> list[str]:
    """Fields the type does not read. They are allowed (payloads may carry the caller's
    own data, e.g. `dependsOn`) but worth a warning: a typo such as `bc` for `bcc`
    would otherwise go unnoticed."""
    return sorted(set(p) - known)


def text(p: Mapping[str, Any], name: str, default: Any = _MISSING) -> Any:
    """A non-empty string; `default` when absent (required when no default)."""
    value = p.get(name)
    if value is None:
        if default is _MISSING:
            raise bad(name, "required")
        return default
    if not isinstance(value, str):
        raise bad(name, f"must be a string, not {_kind(value)}")
    if not value.strip():
        raise bad(name, "must not be empty")
    return value


def flag(p: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = p.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, f"must be true or false, not {_kind(value)}")
    return value


def integer(
    p: Mapping[str, Any],
    name: str,
    default: Any = _MISSING,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> Any:
    value = p.get(name)
    if value is None:
        if default is _MISSING:
            raise bad(name, "required")
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(name, f"must be an integer, not {_kind(value)}")
    if isinstance(value, float) and not value.is_integer():
        raise bad(name, "must be a whole number")
    number = int(value)
    if minimum is not None and number < minimum:
        raise bad(name, f"must be at least {minimum}")
    if maximum is not None and number > maximum:
        raise bad(name, f"must be at most {maximum}")
    return number


def addresses(p: Mapping[str, Any], name: str, *, required: bool = False) -> list[str]:
    """A string or a list of strings (e.g. email recipients)."""
    value = p.get(name)
    if value is None:
        if required:
            raise bad(name, "required")
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise bad(name, "must be a string or a list of strings")
    cleaned = [v.strip() for v in items if v.strip()]
    if required and not cleaned:
        raise bad(name, "must name at least one recipient")
    return cleaned


def string_map(p: Mapping[str, Any], name: str) -> dict[str, str]:
    """An object of string values (numbers and booleans are written as JSON would)."""
    value = p.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise bad(name, f"must be an object, not {_kind(value)}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            out[key] = "true" if item else "false"
        elif isinstance(item, str | int | float):
            out[key] = str(item)
        else:
            raise bad(f"{name}.{key}", f"must be a string, not {_kind(item)}")
    return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(p: Mapping[str, Any], name: str, default: Any = _MISSING) -> Any:
    """`30d`, `12h`, `15m`, `90s`, `500ms`, `2w`, or a number of milliseconds."""
    value = p.get(name)
    if value is None:
        if default is _MISSING:
            raise bad(name, "required")
        return default
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise bad(name, "must be a non-negative number of milliseconds")
        return float(value) / 1000
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "ms"]
    raise bad(name, "must be a duration like 30d, 12h, 15m, 90s, 500ms or milliseconds")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
