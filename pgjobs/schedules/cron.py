"""Cron schedules: expressions, timezones, and which fires are due — pure, no I/O.

An expression is matched against the *local wall clock* of the schedule's IANA
timezone; each matching wall time is then mapped to one instant:

* a wall time that exists once maps to that instant;
* a wall time skipped by a spring-forward (02:30 on the night clocks jump from 02:00
  to 03:00) maps to the first instant after the jump (03:00 local): the next valid
  instant, so a daily job still runs that day;
* a wall time repeated by a fall-back (02:30 happening twice) maps to its first
  occurrence only, so it fires once.

Several wall times may map to one instant (all of a skipped hour); the schedule fires
once per instant. croniter is used only on naive wall times, where it is plain
calendar arithmetic: its own timezone handling repeats or loops on fall-back days.

The optional sixth field holds SECONDS and comes LAST (croniter's convention):
`*/10 * * * * 30` is "every 10 minutes, at second 30", `* * * * * *` every second.

`due_fires` is the whole firing decision as a pure function of the schedule, the first
slot not yet handled, and now — so the maintenance task is a thin shell around it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterBadDateError, CroniterError, croniter

from pgjobs.errors import ValidationError

ALIASES: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FIELDS: tuple[tuple[str, str], ...] = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day-of-week", "0-7 or sun-sat"),
    ("second", "0-59"),
)
MISFIRE_POLICIES = ("skip", "run_once", "catch_up")
MAX_EXPRESSION_LENGTH = 100  # the job_schedules.cron_expression column
# On-time fires handled in one round; more (a huge grace over a per-second schedule)
# are left for the next round rather than enumerated without bound.
MAX_FIRES_PER_ROUND = 1000

# croniter's hashed (H) and random (R) values differ per process: two leaders would
# disagree about the fire instants, so they are refused.
_HASHED = re.compile(r"(?:^|[,/-])[hr](?:$|[(/,-])", re.IGNORECASE)
_ONE_MICROSECOND = timedelta(microseconds=1)
# A search anchor for "does this expression ever match": fixed, so validation is
# deterministic, and a leap year, so 29 February counts.
_VALIDATION_ANCHOR = datetime(2000, 1, 1)


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True)
class CronExpression:
    """A validated expression: `text` as given, `fields` with any @alias expanded."""

    text: str
    fields: str

    @property
    def has_seconds(self) -> bool:
        return len(self.fields.split()) == 6


def parse_cron(text: object) -> CronExpression:
    """Validate `text`; a ValidationError quotes the expression and the bad field."""
    if not isinstance(text, str) or not text.strip():
        raise ValidationError("cron expression must be a non-empty string", field="cron")
    shown = text.strip()
    if len(shown) > MAX_EXPRESSION_LENGTH:
        raise ValidationError(
            f"cron expression is longer than {MAX_EXPRESSION_LENGTH} characters", field="cron"
        )
    if shown.startswith("@"):
        fields = ALIASES.get(shown.lower())
        if fields is None:
            raise ValidationError(
                f"invalid cron expression {shown!r}: unknown alias; use one of "
                + ", ".join(sorted(ALIASES)),
                field="cron",
            )
        return CronExpression(shown, fields)
    if not shown.isascii() or not shown.isprintable():
        raise ValidationError(
            f"invalid cron expression {shown!r}: use plain ASCII fields separated by spaces",
            field="cron",
        )
    parts = shown.split()
    if len(parts) not in (5, 6):
        raise ValidationError(
            f"invalid cron expression {shown!r}: expected 5 fields (minute hour day-of-month "
            f"month day-of-week) or 6 with seconds last, got {len(parts)}",
            field="cron",
        )
    for index, part in enumerate(parts):
        _check_field(shown, parts, index, part)
    fields = " ".join(parts)
    try:
        croniter(fields, _VALIDATION_ANCHOR).get_next(datetime)
    except CroniterBadDateError:
        raise ValidationError(
            f"invalid cron expression {shown!r}: it never matches a date", field="cron"
        ) from None
    except (CroniterError, ValueError, TypeError) as exc:
        raise ValidationError(f"invalid cron expression {shown!r}: {exc}", field="cron") from None
    return CronExpression(shown, fields)


def _check_field(shown: str, parts: list[str], index: int, part: str) -> None:
    name, allowed = FIELDS[index]
    problem = None
    if _HASHED.search(part):
        problem = "hashed (H) and random (R) values are not supported"
    else:
        # The field alone, every other field '*': croniter then fails only because of it.
        probe = ["*"] * len(parts)
        probe[index] = part
        try:
            croniter.expand(" ".join(probe))
        except (CroniterError, ValueError, TypeError, IndexError):
            problem = f"allowed: {allowed}, '*', lists a,b, ranges a-b, steps */n or a-b/n"
    if problem is not None:
        raise ValidationError(
            f"invalid cron expression {shown!r}: {name} field {part!r} is not valid ({problem})",
            field="cron",
        )


# ---------------------------------------------------------------- timezones


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def parse_timezone(name: object) -> ZoneInfo:
    """An IANA timezone by name; a ValidationError quoting the name if unknown."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(
            "timezone must be an IANA name such as 'UTC' or 'Europe/Berlin'", field="timezone"
        )
    if name not in _zone_names():
        raise ValidationError(
            f"unknown timezone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'",
            field="timezone",
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown timezone {name!r}", field="timezone") from None


# ---------------------------------------------------------------- fire instants


class Cron:
    """An expression in a timezone: the instants it fires at.

    Keeps one croniter for speed, so an instance is not safe to share between threads.
    """

    def __init__(self, expression: CronExpression, timezone: ZoneInfo) -> None:
        self.expression = expression
        self.timezone = timezone
        self._iter = croniter(expression.fields, _VALIDATION_ANCHOR)

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> Cron:
        return cls(parse_cron(expression), parse_timezone(timezone))

    def next_fire(self, after: datetime) -> datetime:
        """The first fire instant strictly after `after` (an aware datetime)."""
        local = after.astimezone(self.timezone)
        wall = local.replace(tzinfo=None, fold=0)
        if local.fold and _is_ambiguous(wall, self.timezone):
            # `after` is in the second pass of a repeated hour: every wall time of that
            # hour already fired during the first pass.
            wall = _repeat_end(after, self.timezone) - _ONE_MICROSECOND
        while True:
            wall = self._iter.get_next(datetime, start_time=wall)
            at = resolve_wall_time(wall, self.timezone)
            if at > after:
                return at

    def prev_fire(self, before: datetime) -> datetime | None:
        """The last fire instant strictly before `before`, or None if there is none."""
        local = before.astimezone(self.timezone)
        wall = local.replace(tzinfo=None, fold=0)
        if local.fold and _is_ambiguous(wall, self.timezone):
            wall = _repeat_end(before, self.timezone)
        while True:
            try:
                wall = self._iter.get_prev(datetime, start_time=wall)
            except CroniterBadDateError:
                return None
            at = resolve_wall_time(wall, self.timezone)
            if at < before:
                return at

    def fires(self, after: datetime) -> Iterator[datetime]:
        """Fire instants strictly after `after`, in order, without end."""
        at = after
        while True:
            at = self.next_fire(at)
            yield at


def resolve_wall_time(wall: datetime, tz: ZoneInfo) -> datetime:
    """The instant a naive local wall time fires at (see the module docstring), in UTC."""
    first = wall.replace(tzinfo=tz, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == wall:
        return instant  # exists; for a repeated time fold=0 is its first occurrence
    # Skipped by a forward jump: fold=1 reads it with the offset after the jump (an
    # instant before the jump), fold=0 with the offset before it (an instant after).
    before_jump = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return _first_instant_with_offset(before_jump, instant, tz)


def _is_ambiguous(wall: datetime, tz: ZoneInfo) -> bool:
    return (
        wall.replace(tzinfo=tz, fold=0).utcoffset() != wall.replace(tzinfo=tz, fold=1).utcoffset()
    )


def _repeat_end(instant: datetime, tz: ZoneInfo) -> datetime:
    """For an instant in the second pass of a repeated period: the naive wall time at
    which that period ends (the first wall time that is not repeated)."""
    local = instant.astimezone(tz)
    wall = local.replace(tzinfo=None, fold=0)
    old_offset = wall.replace(tzinfo=tz, fold=0).utcoffset()
    new_offset = local.utcoffset()
    assert old_offset is not None and new_offset is not None
    lower = instant - (old_offset - new_offset)  # before the backward jump
    jump = _first_instant_with_offset(lower, instant, tz)
    return (jump + old_offset).replace(tzinfo=None)


def _first_instant_with_offset(lower: datetime, upper: datetime, tz: ZoneInfo) -> datetime:
    """The first instant in (lower, upper] whose UTC offset is that of `upper`, given
    one offset change in between. Transitions fall on whole seconds: bisect seconds."""
    target = upper.astimezone(tz).utcoffset()
    low = int(lower.timestamp() // 1)
    high = -int(-upper.timestamp() // 1)
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, UTC).astimezone(tz).utcoffset() == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


# ---------------------------------------------------------------- misfires


def parse_misfire(value: object) -> str:
    if value is None:
        return "skip"
    if not isinstance(value, str) or value.replace("-", "_") not in MISFIRE_POLICIES:
        raise ValidationError(
            f"unknown misfire policy {value!r}: use skip, run_once or catch_up", field="misfire"
        )
    return value.replace("-", "_")


@dataclass(frozen=True, slots=True)
class Fire:
    """One job to enqueue: for slot `at`; `catch_up` names the policy that fired a
    slot that was missed, None for an on-time fire."""

    at: datetime
    catch_up: str | None = None


@dataclass(frozen=True, slots=True)
class FirePlan:
    fires: tuple[Fire, ...]
    next_run_at: datetime
    # The first missed slot, when slots were missed (fired or not, per the policy).
    missed_since: datetime | None = None


def due_fires(
    cron: Cron,
    next_due: datetime,
    now: datetime,
    *,
    misfire: str = "skip",
    grace: timedelta = timedelta(seconds=10),
    max_catch_up: int = 100,
) -> FirePlan:
    """Which slots fire now, and the schedule's next_run_at afterwards.

    `next_due` is the first slot not yet handled (the stored next_run_at). Slots up to
    `grace` old are on time and always fire. Older ones were missed (no leader ran
    then) and follow the policy: `skip` drops them, `run_once` fires the latest of
    them once, `catch_up` fires each, at most `max_catch_up` (the latest ones).
    """
    if next_due > now:
        return FirePlan((), next_due)
    cutoff = now - grace
    fires: list[Fire] = []
    missed_since = None
    if next_due < cutoff:
        missed_since = next_due
        if misfire == "run_once":
            latest = cron.prev_fire(cutoff)
            if latest is not None and latest >= next_due:
                fires.append(Fire(latest, "run_once"))
        elif misfire == "catch_up" and max_catch_up > 0:
            missed: list[datetime] = []
            at = cron.prev_fire(cutoff)
            while at is not None and at >= next_due and len(missed) < max_catch_up:
                missed.append(at)
                at = cron.prev_fire(at)
            fires.extend(Fire(at, "catch_up") for at in reversed(missed))
    at = next_due if next_due >= cutoff else cron.next_fire(cutoff - _ONE_MICROSECOND)
    on_time = 0
    while at <= now:
        if on_time == MAX_FIRES_PER_ROUND:
            return FirePlan(tuple(fires), at, missed_since)
        fires.append(Fire(at))
        on_time += 1
        at = cron.next_fire(at)
    return FirePlan(tuple(fires), at, missed_since)
