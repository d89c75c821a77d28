"""Formatting for the dashboard's templates: numbers, times, durations, payloads with
their secrets masked and their size capped, and cron expressions in words.

Pure functions of their arguments (the current time is passed in), so they are tested
without a server. Everything returned is plain text: the templates escape it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pgjobs import redact
from pgjobs.ops import format_duration_ms

MASK = "••••••"


# ---------------------------------------------------------------- numbers and time


def number(value: int | float | None) -> str:
    """1234567 -> "1,234,567"."""
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def percent(share: float | None) -> str:
    """0.0312 -> "3.1%"."""
    if share is None:
        return "-"
    shown = share * 100
    return f"{shown:.0f}%" if shown in (0, 100) else f"{shown:.1f}%"


def rate_per_minute(count: int, minutes: float) -> str:
    """Jobs per minute, or per hour when that reads better (less than one a minute)."""
    if minutes <= 0:
        return "-"
    per_min = count / minutes
    if per_min >= 10:
        return f"{per_min:,.0f}/min"
    if per_min >= 1:
        return f"{per_min:.2g}/min"
    per_hour = per_min * 60
    if per_hour >= 10:
        return f"{per_hour:,.0f}/h"
    return f"{per_hour:.2g}/h" if per_hour else "0/min"


def duration_ms(ms: float | None) -> str:
    return format_duration_ms(ms)


def between(start: datetime | None, end: datetime | None) -> str:
    """The time from `start` to `end` ("-" when either is missing)."""
    if start is None or end is None:
        return "-"
    return format_duration_ms(max(0.0, (end - start).total_seconds() * 1000))


def timestamp(at: datetime | None) -> str:
    """An exact UTC time: 2026-11-28 18:33:22Z."""
    if at is None:
        return "-"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso(at: datetime | None) -> str:
    return "" if at is None else at.isoformat()


def relative(at: datetime | None, now: datetime) -> str:
    """ "3m ago", "in 2h05m", "just now"."""
    if at is None:
        return "-"
    delta = (at - now).total_seconds()
    if abs(delta) < 1:
        return "just now"
    text = format_duration_ms(abs(delta) * 1000)
    if abs(delta) >= 60:
        text = text.replace(".0s", "s")
    return f"in {text}" if delta > 0 else f"{text} ago"


def short_id(value: Any) -> str:
    """An id shortened for lists. Job ids are time-ordered (UUIDv7): their first digits
    are the creation time, the same for jobs created together, so the end is kept too."""
    text = str(value)
    return text if len(text) <= 13 else f"{text[:8]}…{text[-4:]}"


def truncate(text: str | None, limit: int) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


# ---------------------------------------------------------------- payloads


def is_secret_key(key: str) -> bool:
    return redact.is_secret_key(key)


def mask_secrets(value: Any) -> Any:
    """A copy of `value` with the value of every secret-looking key replaced by MASK and
    every URL password by ***."""
    return redact.mask_secrets(value, MASK)


def pretty_json(value: Any, limit: int) -> tuple[str, bool]:
    """(`value` masked and indented, cut to `limit` characters; whether it was cut)."""
    text = json.dumps(mask_secrets(value), indent=2, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return text, False
    return text[:limit], True


def compact_json(value: Any, limit: int) -> str:
    """`value` as one line of JSON, secrets masked, at most `limit` characters."""
    text = json.dumps(mask_secrets(value), ensure_ascii=False, default=str)
    return truncate(text, limit)


def mask_preview(text: str) -> str:
    """Mask secrets in a preview of JSON text that may be cut anywhere."""
    return redact.mask_json_text(text, MASK)


def preview(text: str | None, total_bytes: int | None, limit: int) -> str:
    """A one-line payload preview for lists: secrets masked, at most `limit` characters."""
    if not text:
        return ""
    masked = " ".join(mask_preview(text).split())
    cut = len(masked) > limit or (total_bytes is not None and total_bytes > len(text))
    return masked[:limit] + ("…" if cut else "")


def byte_size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1024 / 1024:.1f} MB"


# ---------------------------------------------------------------- cron in words

_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_DAY_NAMES = {name[:3].lower(): i for i, name in enumerate(_DAYS)}
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_ALIASES = {
    "@yearly": "every year on 1 January at 00:00",
    "@annually": "every year on 1 January at 00:00",
    "@monthly": "every month on day 1 at 00:00",
    "@weekly": "every Sunday at 00:00",
    "@daily": "every day at 00:00",
    "@midnight": "every day at 00:00",
    "@hourly": "every hour at minute 0",
}


def cron_in_words(expression: str) -> str | None:
    """Common 5-field expressions in words ("every day at 02:30", "every 5 minutes");
    None when the expression is not one of the easy shapes."""
    text = expression.strip()
    if text.lower() in _ALIASES:
        return _ALIASES[text.lower()]
    parts = text.split()
    if len(parts) == 6:
        if parts[5] != "0":
            return None
        parts = parts[:5]
    if len(parts) != 5:
        return None
    minute, hour, dom, month, dow = parts
    days = _days(dow)
    if days is None or not _simple(dom) or not _simple(month):
        return None
    on = _on(dom, month, days)
    if on is None:
        return None
    if hour == "*" and on == "":
        if minute == "*":
            return "every minute"
        step = _step(minute)
        if step is not None:
            return "every minute" if step == 1 else f"every {step} minutes"
        if minute.isdecimal():
            return f"every hour at minute {int(minute)}"
        return None
    if not minute.isdecimal():
        return None
    step = _step(hour)
    if step is not None and on == "":
        return f"every {step} hours at minute {int(minute)}" if step > 1 else None
    hours = _numbers(hour, 23)
    if hours is None:
        return None
    times = " and ".join(f"{h:02d}:{int(minute):02d}" for h in hours)
    if on == "":
        return f"every day at {times}"
    return f"at {times} {on}"


def _simple(field: str) -> bool:
    return field == "*" or _numbers(field, 31) is not None


def _step(field: str) -> int | None:
    if field.startswith("*/") and field[2:].isdecimal() and int(field[2:]) > 0:
        return int(field[2:])
    return None


def _numbers(field: str, top: int) -> list[int] | None:
    out: list[int] = []
    for part in field.split(","):
        if not part.isdecimal() or int(part) > top:
            return None
        out.append(int(part))
    return out


def _days(field: str) -> list[int] | None:
    """Days of week (0 = Sunday) of a dow field, [] for *, None when not easy."""
    if field == "*":
        return []
    out: list[int] = []
    for part in field.lower().split(","):
        first, _, last = part.partition("-")
        a, b = _day(first), _day(last) if last else _day(first)
        if a is None or b is None or b < a:
            return None
        out.extend(range(a, b + 1))
    return out


def _day(token: str) -> int | None:
    if token.isdecimal() and int(token) <= 7:
        return int(token) % 7
    return _DAY_NAMES.get(token[:3]) if len(token) >= 3 else None


def _on(dom: str, month: str, days: list[int]) -> str | None:
    """The "on ..." part of the words; "" for every day, None when not easy."""
    if dom != "*" and days:
        return None  # cron ORs the two fields: not easy to say
    if days:
        if days == [1, 2, 3, 4, 5]:
            return "on Monday to Friday"
        if sorted(days) == [0, 6]:
            return "on Saturday and Sunday"
        return "on " + ", ".join(_DAYS[d] for d in days)
    if dom == "*" and month == "*":
        return ""
    if dom == "*":
        return None
    doms = ", ".join(dom.split(","))
    if month == "*":
        return f"on day {doms} of every month"
    months = _numbers(month, 12)
    if not months or 0 in months:
        return None
    return f"on {doms} " + ", ".join(_MONTHS[m - 1] for m in months)
