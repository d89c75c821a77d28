"""The job search language, parsed into the parameters of one fixed statement
(ops_search_jobs in queries/ops.sql). Every surface (the dashboard's search box,
`GET /api/jobs?q=`, `pgjobs jobs --search`) parses its text here, so they accept and
refuse the same queries with the same messages.

A query is terms separated by spaces; a job must match all of them. Double quotes keep
spaces inside a value (`error:"connection refused"`, `name="Ann Lee"`).

- `id:0193a1b2` - ids starting with these hex digits; a bare whole UUID means the same
- `type:send-email`, `queue:emails` - exactly that type or queue
- `status:failed` (or `status:failed,cancelled`) - one of these statuses
- `error:WORDS` - the job's last error contains these words (full text: whole words,
  any case; `"a b"` a phrase, `-word` not this word, `or` either side)
- `KEY=VALUE` or `payload.KEY=VALUE` - the payload holds VALUE at KEY; KEY may be a
  dotted path into nested objects (`customer.id=7`). VALUE is read as JSON when it is a
  number, true, false, null or a quoted string, as text otherwise; a number, true or false
  also matches the same text (`user_id=42` finds 42 and "42").
- any other word - a word of the last error, as `error:` (so `timeout` finds every job
  whose last error says timeout)

The values only ever become statement parameters: a JSON object for `payload @> ...`,
a text-search string for websearch_to_tsquery (which accepts any text), an id range.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from pgjobs.errors import ValidationError
from pgjobs.ops.filters import parse_status
from pgjobs.producer.options import unstorable_json, validate_queue, validate_type
from pgjobs.redact import is_secret_key
from pgjobs.validation import MAX_SEARCH_CHARS

MAX_QUERY_CHARS = MAX_SEARCH_CHARS
MAX_TERMS = 20
MAX_PATH_DEPTH = 8

# A term: unquoted characters and quoted runs, glued together (key="a b" is one term).
_TERM = re.compile(r'(?:[^\s"]+|"(?:[^"\\]|\\.)*"?)+')
_KEY = re.compile(r"[A-Za-z0-9_$@-][A-Za-z0-9_$@.-]*")
_ID_PREFIX = re.compile(r"[0-9a-f-]{1,36}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_FIELDS = ("id", "type", "queue", "status", "error")


@dataclass(frozen=True, slots=True)
class JobSearch:
    """A parsed query; `params()` gives the statement's parameters."""

    text: str
    queue: str | None = None
    type: str | None = None
    statuses: tuple[str, ...] | None = None
    id_prefix: str | None = None
    error: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    payload_alt: dict[str, Any] | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.queue or self.type or self.statuses or self.id_prefix or self.error or self.payload
        )

    def params(self) -> dict[str, Any]:
        low, high = id_range(self.id_prefix) if self.id_prefix else (None, None)
        return {
            "queue": self.queue,
            "type": self.type,
            "statuses": list(self.statuses) if self.statuses else None,
            "id_low": low,
            "id_high": high,
            "error": self.error,
            "payload": json.dumps(self.payload) if self.payload else None,
            "payload_alt": json.dumps(self.payload_alt) if self.payload_alt else None,
        }


def parse_search(text: str) -> JobSearch:
    """Parse a search query; ValidationError (field "q") names what is wrong."""
    if len(text) > MAX_QUERY_CHARS:
        raise ValidationError(f"a search is at most {MAX_QUERY_CHARS} characters", field="q")
    if "\x00" in text:
        raise ValidationError("a search cannot contain a NUL character", field="q")
    _storable(text, "a search")  # lone surrogates: undecodable bytes on a command line
    terms = _TERM.findall(text)
    if len(terms) > MAX_TERMS:
        raise ValidationError(f"a search has at most {MAX_TERMS} terms", field="q")
    found: dict[str, Any] = {}
    words: list[str] = []
    payload: dict[str, Any] = {}
    alt: dict[str, Any] = {}
    has_alt = False
    for term in terms:
        key, sep, raw = _split(term)
        if sep == ":" and key.lower() in _FIELDS:
            name = key.lower()
            value = _unquote(raw)
            if name == "error":
                words.append(raw)
                continue
            if name in found:
                raise ValidationError(f"{name}: is given twice", field="q")
            found[name] = _field_value(name, value)
        elif sep == "=":
            path = _path(key)
            value, text_value = _payload_value(raw)
            _put(payload, path, value)
            _put(alt, path, text_value if text_value is not None else value)
            has_alt = has_alt or text_value is not None
        elif _UUID.fullmatch(term):
            if "id" in found:
                raise ValidationError("id: is given twice", field="q")
            found["id"] = term.lower()
        else:
            words.append(term)
    return JobSearch(
        text=text.strip(),
        queue=found.get("queue"),
        type=found.get("type"),
        statuses=found.get("status"),
        id_prefix=found.get("id"),
        error=" ".join(words) if words else None,
        payload=payload,
        payload_alt=alt if has_alt else None,
    )


def _split(term: str) -> tuple[str, str, str]:
    """(key, separator, value) of `key:value` or `key=value` (the first separator outside
    quotes), or ("", "", term)."""
    for i, ch in enumerate(term):
        if ch == '"':
            break
        if ch in ":=" and i > 0:
            return term[:i], ch, term[i + 1 :]
    return "", "", term


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw.startswith('"') and raw.endswith('"'):
        try:
            decoded = json.loads(raw)
        except ValueError:
            return raw[1:-1]
        return decoded if isinstance(decoded, str) else raw[1:-1]
    return raw


def _field_value(name: str, value: str) -> Any:
    if not value:
        raise ValidationError(f"{name}: needs a value", field="q")
    if name == "queue":
        return validate_queue(value)
    if name == "type":
        return validate_type(value)
    if name == "status":
        return tuple(dict.fromkeys(parse_status(s) for s in value.split(",") if s.strip()))
    prefix = value.lower()
    if not _ID_PREFIX.fullmatch(prefix):
        raise ValidationError("id: takes the start of a job id (hex digits and dashes)", field="q")
    return prefix


def _path(key: str) -> list[str]:
    if not _KEY.fullmatch(key) or ".." in key or key.endswith("."):
        raise ValidationError(
            f"{key[:40]!r} is not a payload field: use letters, digits, _ - $ @ and dots "
            "between nested keys",
            field="q",
        )
    parts = key.split(".")
    if parts[0] == "payload" and len(parts) > 1:
        parts = parts[1:]
    if len(parts) > MAX_PATH_DEPTH:
        raise ValidationError(f"a payload path has at most {MAX_PATH_DEPTH} keys", field="q")
    if is_secret_key(parts[-1]):
        # Its value is masked wherever a job is shown: matching on it would let anyone
        # who may search confirm a guess of the secret.
        raise ValidationError(
            f"{parts[-1][:40]!r} holds a secret, which search does not match", field="q"
        )
    return parts


def _payload_value(raw: str) -> tuple[Any, str | None]:
    """(the value to match, its text form when the value also matches as text)."""
    if raw.startswith('"'):
        return _storable(_unquote(raw)), None
    try:
        value = json.loads(raw, parse_constant=_not_json)
    except ValueError:
        return _storable(raw), None
    if isinstance(value, float) and not math.isfinite(value):
        return raw, None  # 1e999: no JSON number PostgreSQL holds; match the text typed
    if isinstance(value, int | float):  # bool included
        return value, raw
    if value is None:
        return None, None
    return raw, None  # an object or array written out: matched as the text typed


def _not_json(constant: str) -> Any:
    """NaN and Infinity are Python's JSON extensions, not JSON: read them as text."""
    raise ValueError(constant)


def _storable(value: str, what: str = "a payload value") -> str:
    problem = unstorable_json(json.dumps(value, ensure_ascii=False))
    if problem:
        raise ValidationError(f"{what} contains {problem}", field="q")
    return value


def _put(target: dict[str, Any], path: list[str], value: Any) -> None:
    node = target
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            if key in node:
                raise ValidationError(f"payload field {key!r} is given twice", field="q")
            child = node[key] = {}
        node = child
    if path[-1] in node:
        raise ValidationError(f"payload field {'.'.join(path)!r} is given twice", field="q")
    node[path[-1]] = value


def id_range(prefix: str) -> tuple[UUID, UUID]:
    """The lowest and highest UUID that start with `prefix` (hex digits, dashes ignored),
    so an id prefix is an index range on the primary key."""
    digits = prefix.replace("-", "")[:32]
    return UUID(digits.ljust(32, "0")), UUID(digits.ljust(32, "f"))
