"""Validated filters and keyset cursors for job listings.

Every surface passes raw user input here, so a bad status, time or cursor is rejected
with the same message everywhere, before any SQL runs.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pgjobs.errors import ValidationError
from pgjobs.models import STATUS_ALIASES, STATUSES
from pgjobs.producer.options import validate_queue, validate_type
from pgjobs.validation import DEFAULT_LIMIT, MAX_LIMIT, MIN_LIMIT

_ID_PREFIX = re.compile(r"^[0-9a-f-]{1,36}$")


def clamp_limit(value: Any, default: int = DEFAULT_LIMIT) -> int:
    """A page size clamped to 1..500; ValidationError if it is not an integer."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValidationError("limit must be an integer", field="limit")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?\d{1,20}", text):
            raise ValidationError(f"limit must be an integer (got {value[:40]!r})", field="limit")
        value = int(text)
    if not isinstance(value, int):
        raise ValidationError("limit must be an integer", field="limit")
    return max(MIN_LIMIT, min(MAX_LIMIT, value))


def parse_status(value: str) -> str:
    status = STATUS_ALIASES.get(value.strip().lower(), value.strip().lower())
    if status not in STATUSES:
        names = ", ".join((*STATUSES, *STATUS_ALIASES))
        raise ValidationError(f"unknown status {value[:40]!r}: use one of {names}", field="status")
    return status


def parse_time(value: str | datetime, name: str) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(
                f"{name} must be an ISO-8601 time with an offset (got {value[:40]!r})", field=name
            ) from None
    if parsed.tzinfo is None:
        raise ValidationError(
            f"{name} needs a timezone offset, e.g. 2030-01-01T09:00:00+00:00", field=name
        )
    return parsed


@dataclass(frozen=True, slots=True)
class JobFilter:
    queue: str | None = None
    statuses: tuple[str, ...] | None = None
    type: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    id_prefix: str | None = None

    @classmethod
    def build(
        cls,
        *,
        queue: str | None = None,
        status: str | list[str] | tuple[str, ...] | None = None,
        type: str | None = None,
        created_after: str | datetime | None = None,
        created_before: str | datetime | None = None,
        id_prefix: str | None = None,
    ) -> JobFilter:
        statuses: tuple[str, ...] | None = None
        if status:
            raw = status.split(",") if isinstance(status, str) else list(status)
            statuses = tuple(dict.fromkeys(parse_status(s) for s in raw if s.strip())) or None
        prefix = None
        if id_prefix:
            prefix = id_prefix.strip().lower()
            if not _ID_PREFIX.match(prefix):
                raise ValidationError(
                    "id search takes the start of a job id (hex digits and dashes)", field="id"
                )
        return cls(
            queue=validate_queue(queue) if queue else None,
            statuses=statuses,
            type=validate_type(type) if type else None,
            created_after=parse_time(created_after, "created_after") if created_after else None,
            created_before=(
                parse_time(created_before, "created_before") if created_before else None
            ),
            id_prefix=prefix,
        )


def encode_cursor(created_at: datetime, job_id: UUID) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The (created_at, id) after which the next page starts."""
    try:
        text = cursor.strip()
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        when, _, ident = raw.partition("|")
        created = datetime.fromisoformat(when)
        if created.tzinfo is None:
            raise ValueError("naive time")
        return created, UUID(ident)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationError("cursor is not one this server issued", field="cursor") from None
