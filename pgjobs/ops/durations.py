"""Human durations for operator input: `7d`, `24h`, `90m`, `1h30m`, `45s`, `500ms`.

A bare number is milliseconds, like the JOBS_CLEAN_* settings.
"""

from __future__ import annotations

import re

from pgjobs.errors import ValidationError

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
MAX_DURATION_MS = 100 * 365 * 86_400_000


def parse_duration_ms(text: str, *, name: str = "duration") -> int:
    """Milliseconds in `text`; ValidationError naming `name` when it is not a duration."""
    raw = text.strip().lower().replace(" ", "")
    if raw.isdigit():
        total = float(raw)
    else:
        pos, total = 0, 0.0
        for match in _PART.finditer(raw):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNITS_MS[match.group(2)]
            pos = match.end()
        if pos != len(raw) or not raw:
            raise ValidationError(
                f"{name} must be a duration like 7d, 24h, 30m, 1h30m, 45s or milliseconds "
                f"(got {text[:40]!r})",
                field=name,
            )
    if total > MAX_DURATION_MS:
        raise ValidationError(f"{name} is longer than 100 years (got {text[:40]!r})", field=name)
    return round(total)


def format_duration_ms(ms: float | None) -> str:
    """Short human form: 850ms, 4.2s, 3m12s, 2h05m, 3d04h."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
