"""Job options: validated once, before anything touches the database.

Every producer — the Python API, the REST API, the CLI — turns what it was given into a
`NewJob` here, so the rules and the error texts are the same everywhere.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from pgjobs.config import Settings
from pgjobs.contract.jsonschema import shape_fields
from pgjobs.contract.shapes import JobCreate
from pgjobs.errors import ValidationError
from pgjobs.ids import uuid7
from pgjobs.jsonlimits import depth_error, too_deep
from pgjobs.models import PRIORITIES, STATUSES
from pgjobs.types import payload_problem
from pgjobs.types.builtin import check_payload
from pgjobs.validation import (
    JOB_TYPE,
    MAX_ATTEMPTS,
    MAX_BACKOFF_STEPS,
    MAX_DELAY_MS,
    MAX_KEY_LENGTH,
    MAX_PRIORITY,
    MAX_TIMEOUT_MS,
    MAX_TYPE_LENGTH,
    QUEUE_NAME,
)

DEPENDENCY_POLICIES = ("fail", "ignore", "cancel")
ON_CONFLICT = ("return", "raise")
# The states in which a job holds its unique key unless told otherwise: while it is live.
UNIQUE_STATES = ("pending", "delayed", "active", "blocked")
MAX_UNIQUE_FOR_MS = MAX_DELAY_MS
# A NUL escape that is not itself escaped (`\\u0000` is a literal backslash + "u0000").
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# What json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# does, with the encoder made once: json.dumps builds a new one per call when given
# options, a third of the time of encoding a small payload.
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

# API option names (the spec's camelCase) and their Python keyword names.
OPTION_ALIASES: dict[str, str] = {
    "priority": "priority",
    "attempts": "attempts",
    "maxRetries": "max_retries",
    "max_retries": "max_retries",
    "delay": "delay",
    "runAt": "run_at",
    "run_at": "run_at",
    "backoff": "backoff",
    "timeout": "timeout",
    "uniqueKey": "unique_key",
    "unique_key": "unique_key",
    "uniqueFor": "unique_for",
    "unique_for": "unique_for",
    "uniqueStates": "unique_states",
    "unique_states": "unique_states",
    "onConflict": "on_conflict",
    "on_conflict": "on_conflict",
    "dependsOn": "depends_on",
    "depends_on": "depends_on",
    "onDependencyFailure": "dependency_policy",
    "dependency_policy": "dependency_policy",
    "rateLimitKey": "rate_limit_key",
    "rate_limit_key": "rate_limit_key",
    "metadata": "metadata",
}


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job ready to insert: every field validated and encoded."""

    id: UUID
    type: str
    queue: str
    payload_json: str
    priority: int
    max_attempts: int
    delay_ms: int
    run_at: datetime | None
    backoff_json: str | None
    timeout_ms: int
    unique_key: str | None = None
    depends_on: list[UUID] | None = None
    dependency_policy: str = "fail"
    rate_limit_key: str | None = None
    metadata_json: str = "{}"
    unique_for_ms: int | None = None
    unique_states: tuple[str, ...] = UNIQUE_STATES
    on_conflict: str = "return"

    @property
    def plain(self) -> bool:
        """True when the row needs no SQL-side logic (runs now, no unique key or deps)."""
        return (
            self.delay_ms == 0
            and self.run_at is None
            and self.unique_key is None
            and not self.depends_on
        )

    def params(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "queue": self.queue,
            "payload": self.payload_json,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "delay_ms": self.delay_ms,
            "run_at": self.run_at,
            "backoff": self.backoff_json,
            "timeout_ms": self.timeout_ms,
            "unique_key": self.unique_key,
            "depends_on": self.depends_on,
            "dependency_policy": self.dependency_policy,
            "rate_limit_key": self.rate_limit_key,
            "metadata": self.metadata_json,
            "unique_for_ms": self.unique_for_ms,
            "unique_states": list(self.unique_states),
            "on_conflict": self.on_conflict,
        }


# A dependency: a job id, or a job built (with its id) for the same batch or flow.
DependsOn = UUID | str | NewJob | Iterable[UUID | str | NewJob] | None


def new_job(
    settings: Settings,
    type: str,
    payload: Any = None,
    *,
    queue: str = "default",
    priority: str | int | None = None,
    attempts: int | None = None,
    max_retries: int | None = None,
    delay: float | None = None,
    run_at: datetime | str | None = None,
    backoff: Any = None,
    timeout: float | None = None,
    unique_key: str | None = None,
    unique_for: float | timedelta | None = None,
    unique_states: Iterable[str] | None = None,
    on_conflict: str | None = None,
    depends_on: DependsOn = None,
    dependency_policy: str | None = None,
    rate_limit_key: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    **unknown: Any,
) -> NewJob:
    """Validate one job's type, payload and options (delay and timeout in ms)."""
    if unknown:
        # Keyword options arrive through **options in App.create: a typo must be a
        # ValidationError like the API's, not a TypeError from deep inside.
        name = sorted(unknown)[0]
        raise ValidationError(f"unknown option '{name}'", field=name)
    if delay is not None and run_at is not None:
        raise ValidationError("give either delay or runAt, not both", field="delay")
    _check_builtin_payload(type, payload)
    key = _key("uniqueKey", unique_key)
    if key is None:
        for name, value in (
            ("uniqueFor", unique_for),
            ("uniqueStates", unique_states),
            ("onConflict", on_conflict),
        ):
            if value is not None:
                raise ValidationError(f"{name} needs a uniqueKey", field=name)
    check_payload(settings, type, payload)
    return NewJob(
        id=uuid7(),
        type=validate_type(type),
        queue=validate_queue(queue),
        payload_json=encode_payload(payload, settings.max_payload_bytes),
        priority=parse_priority(priority),
        max_attempts=_max_attempts(settings, attempts, max_retries),
        delay_ms=_delay_ms(delay),
        run_at=_run_at(run_at),
        backoff_json=_backoff(backoff),
        timeout_ms=_timeout_ms(settings, timeout),
        unique_key=key,
        unique_for_ms=_unique_for(unique_for),
        unique_states=_unique_states(unique_states),
        on_conflict=_on_conflict(on_conflict),
        depends_on=_depends_on(depends_on),
        dependency_policy=_dependency_policy(dependency_policy),
        rate_limit_key=_key("rateLimitKey", rate_limit_key),
        metadata_json=_metadata(metadata),
    )


def _check_builtin_payload(type: Any, payload: Any) -> None:
    problem = payload_problem(type, payload) if isinstance(type, str) else None
    if problem is not None:
        field, message = problem
        raise ValidationError(f"payload.{field}: {message}", field=f"payload.{field}")


def new_job_from_request(settings: Settings, body: Any) -> NewJob:
    """Validate an API-shaped job: {"type", "queue", "payload", "options": {...}}."""
    if not isinstance(body, Mapping):
        raise ValidationError("a job must be a JSON object with at least a 'type'")
    unknown = sorted(set(body) - set(shape_fields(JobCreate)))
    if unknown:
        raise ValidationError(f"unknown field '{unknown[0]}'", field=unknown[0])
    if "type" not in body:
        raise ValidationError("missing field 'type'", field="type")
    # Only an absent or null field takes the default: "" or [] are mistakes to report.
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ValidationError("options must be a JSON object", field="options")
    queue = body.get("queue")
    return new_job(
        settings,
        body["type"],
        body.get("payload"),
        queue="default" if queue is None else queue,
        **keyword_options(options),
    )


def keyword_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Map API option names (camelCase or snake_case) to `new_job` keywords."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        keyword = OPTION_ALIASES.get(name)
        if keyword is None:
            raise ValidationError(f"unknown option '{name}'", field=name)
        if keyword in out:
            raise ValidationError(f"option '{name}' is given twice", field=name)
        out[keyword] = value
    return out


# ------------------------------------------------------------------ single fields


def validate_type(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TYPE_LENGTH:
        raise ValidationError(
            f"job type must be a non-empty string of at most {MAX_TYPE_LENGTH} characters",
            field="type",
        )
    if "\x00" in value:
        raise ValidationError("job type contains a NUL character (\\u0000)", field="type")
    _require_utf8(value, "job type", "type")
    if not value.isprintable():
        raise ValidationError("job type contains a control character", field="type")
    if not JOB_TYPE.fullmatch(value):
        raise ValidationError(
            f"invalid job type {value!r}: use 1-100 characters A-Z a-z 0-9 . _ : - "
            "starting with a letter or digit",
            field="type",
        )
    return value


def validate_queue(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError(
            f"queue name must be a string (got {type(value).__name__})", field="queue"
        )
    if not QUEUE_NAME.fullmatch(value):
        raise ValidationError(
            f"invalid queue name {value[:120]!r}: use 1-100 characters a-z 0-9 . _ : - "
            "starting with a letter or digit",
            field="queue",
        )
    return value


def parse_priority(value: Any) -> int:
    if value is None:
        return PRIORITIES["normal"]
    if isinstance(value, str):
        name = value.strip().lower()
        if name in PRIORITIES:
            return PRIORITIES[name]
        if re.fullmatch(r"-?\d+", name):
            value = int(name)
        else:
            raise ValidationError(
                f"unknown priority {value!r}: use critical, high, normal, low or an integer",
                field="priority",
            )
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            "priority must be critical, high, normal, low or an integer", field="priority"
        )
    if not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise ValidationError(
            f"priority must be between {-MAX_PRIORITY} and {MAX_PRIORITY} (got {value})",
            field="priority",
        )
    return value


def encode_payload(payload: Any, max_bytes: int, what: str = "payload") -> str:
    """`payload` as compact JSON text, or a ValidationError naming `what` is wrong."""
    if payload is None:
        payload = {}
    if not isinstance(payload, Mapping):
        raise ValidationError(f"{what} must be a JSON object", field=what)
    try:
        text = _COMPACT_JSON.encode(payload)
    except TypeError as exc:
        raise ValidationError(f"{what} is not JSON-serializable: {exc}", field=what) from None
    except ValueError as exc:
        # The json module's wording for these differs between Python versions.
        problem = "a circular reference" if "ircular" in str(exc) else "NaN or Infinity"
        raise ValidationError(
            f"{what} is not JSON-serializable: it contains {problem}", field=what
        ) from None
    except RecursionError:
        raise ValidationError(depth_error(what), field=what) from None
    if too_deep(text):
        raise ValidationError(depth_error(what), field=what)
    unstorable = unstorable_json(text)
    if unstorable is not None:
        raise ValidationError(f"{what} contains {unstorable}", field=what)
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise ValidationError(
            f"{what} is {size} bytes; the limit is {max_bytes} (JOBS_MAX_PAYLOAD_BYTES)",
            field=what,
        )
    return text


def unstorable_json(text: str) -> str | None:
    """What in `text` (JSON from json.dumps) PostgreSQL's jsonb cannot hold, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid Unicode (a lone surrogate)"
    if "\\u0000" in text and _JSON_NUL.search(text):
        return "a NUL character (\\u0000), which PostgreSQL cannot store"
    return None


def _require_utf8(value: str, what: str, field: str | None = None) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"{what} contains invalid Unicode (a lone surrogate)", field=field
        ) from None


def _whole_number(
    name: str,
    value: Any,
    *,
    minimum: int,
    maximum: int,
    ms: bool = False,
    integral: bool = False,
) -> int:
    """`value` rounded to an int within bounds. Milliseconds (`ms`) may come with a
    fraction and are rounded; counts (`integral`) may not."""
    unit = " of milliseconds" if ms else ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{name} must be a number{unit} (got {value!r})", field=name)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"{name} must be a finite number (got {value!r})", field=name)
    if integral and value != int(value):
        raise ValidationError(f"{name} must be a whole number (got {value!r})", field=name)
    number = round(value)
    # Bounds apply to the value given, so -0.4 is negative rather than rounded to 0.
    if value < minimum:
        if minimum == 0:
            raise ValidationError(
                f"{name} must be a non-negative number{unit} (got {value!r})", field=name
            )
        raise ValidationError(f"{name} must be at least {minimum} (got {value!r})", field=name)
    if value > maximum:
        limit = f"{maximum} ms" if ms else str(maximum)
        raise ValidationError(f"{name} must be at most {limit} (got {value!r})", field=name)
    return number


def _max_attempts(settings: Settings, attempts: Any, max_retries: Any) -> int:
    if attempts is not None and max_retries is not None:
        raise ValidationError("give either attempts or maxRetries, not both", field="attempts")
    if max_retries is not None:
        retries = _whole_number(
            "maxRetries", max_retries, minimum=0, maximum=MAX_ATTEMPTS - 1, integral=True
        )
        return retries + 1
    if attempts is not None:
        return _whole_number("attempts", attempts, minimum=1, maximum=MAX_ATTEMPTS, integral=True)
    return settings.retry_attempts


def _delay_ms(delay: Any) -> int:
    if delay is None:
        return 0
    if isinstance(delay, timedelta):
        delay = delay.total_seconds() * 1000
    return _whole_number("delay", delay, minimum=0, maximum=MAX_DELAY_MS, ms=True)


def _run_at(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(
                f"runAt must be an ISO-8601 time with an offset (got {value!r})", field="runAt"
            ) from None
    if not isinstance(value, datetime):
        raise ValidationError(
            f"runAt must be an ISO-8601 time with an offset (got {value!r})", field="runAt"
        )
    if value.tzinfo is None:
        raise ValidationError(
            "runAt needs a timezone offset, e.g. 2030-01-01T09:00:00+00:00", field="runAt"
        )
    return value


def _timeout_ms(settings: Settings, timeout: Any) -> int:
    if timeout is None:
        return settings.job_timeout_ms
    return _whole_number("timeout", timeout, minimum=1, maximum=MAX_TIMEOUT_MS, ms=True)


def _backoff(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        if not 1 <= len(value) <= MAX_BACKOFF_STEPS:
            raise ValidationError(
                f"backoff list must have 1 to {MAX_BACKOFF_STEPS} delays", field="backoff"
            )
        delays = [
            _whole_number("backoff", v, minimum=0, maximum=MAX_DELAY_MS, ms=True) for v in value
        ]
        return json.dumps({"type": "list", "delays": delays})
    if isinstance(value, Mapping):
        kind = value.get("type")
        extra = sorted(set(value) - {"type", "delay"})
        if kind not in ("exponential", "fixed") or extra:
            raise ValidationError(
                'backoff must be {"type": "exponential"|"fixed", "delay": ms} '
                "or a list of delays in ms",
                field="backoff",
            )
        if "delay" not in value:
            return json.dumps({"type": kind})  # the worker starts from JOBS_RETRY_DELAY
        delay = _whole_number(
            "backoff delay",
            value["delay"],
            minimum=0,
            maximum=MAX_DELAY_MS,
            ms=True,
        )
        return json.dumps({"type": kind, "delay": delay})
    raise ValidationError(
        'backoff must be {"type": "exponential"|"fixed", "delay": ms} or a list of delays in ms',
        field="backoff",
    )


def _key(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY_LENGTH or "\x00" in value:
        raise ValidationError(
            f"{name} must be a string of 1 to {MAX_KEY_LENGTH} characters without NUL",
            field=name,
        )
    _require_utf8(value, name, name)
    return value


def _unique_for(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds() * 1000
    return _whole_number("uniqueFor", value, minimum=0, maximum=MAX_UNIQUE_FOR_MS, ms=True)


def _unique_states(value: Any) -> tuple[str, ...]:
    if value is None:
        return UNIQUE_STATES
    if isinstance(value, str) or not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise ValidationError("uniqueStates must be a list of job statuses", field="uniqueStates")
    states = list(value)
    unknown = [s for s in states if s not in STATUSES]
    if unknown or not states:
        shown = f" (got {unknown[0]!r})" if unknown else ""
        raise ValidationError(
            "uniqueStates must be a non-empty list of: " + ", ".join(STATUSES) + shown,
            field="uniqueStates",
        )
    return tuple(s for s in STATUSES if s in states)


def _on_conflict(value: Any) -> str:
    if value is None:
        return "return"
    if value not in ON_CONFLICT:
        raise ValidationError("onConflict must be 'return' or 'raise'", field="onConflict")
    return str(value)


def _depends_on(value: Any) -> list[UUID] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, UUID | str | NewJob) else value
    if not isinstance(items, Iterable) or isinstance(items, Mapping):
        raise ValidationError("dependsOn must be a job id or a list of job ids", field="dependsOn")
    ids: list[UUID] = []
    for item in items:
        if isinstance(item, NewJob):
            ids.append(item.id)  # a job built for the same batch or flow
            continue
        try:
            ids.append(item if isinstance(item, UUID) else UUID(str(item)))
        except ValueError:
            raise ValidationError(
                f"dependsOn has an invalid job id {str(item)[:60]!r}", field="dependsOn"
            ) from None
    return sorted(set(ids)) or None


def _dependency_policy(value: Any) -> str:
    if value is None:
        return "fail"
    if value not in DEPENDENCY_POLICIES:
        raise ValidationError(
            "onDependencyFailure must be one of fail, ignore, cancel", field="onDependencyFailure"
        )
    return str(value)


def _metadata(value: Any) -> str:
    if value is None:
        return "{}"
    return encode_payload(value, 64 * 1024, "metadata")
