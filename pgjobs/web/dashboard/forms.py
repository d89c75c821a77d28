"""The schedule form of the dashboard: what it shows, and how a posted form becomes the
fields pgjobs.ops takes (the same fields as `pgjobs schedule create|update` and the
REST API, validated by the same code in pgjobs.schedules.store).

A form that cannot be stored is shown again with the user's input as typed, never
reset to what is stored, so a typo in a long payload costs nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from pgjobs.errors import ValidationError
from pgjobs.schedules.store import Schedule

MISFIRE_POLICIES = ("skip", "run_once", "catch_up")
# The form edits these; anything else a schedule has (priority, job options, catch-up
# limit) is left as stored and changed through the CLI or the REST API.
EDITABLE = ("type", "queue", "cron", "timezone", "payload", "description", "misfire", "enabled")


@cache
def timezone_names() -> tuple[str, ...]:
    """Suggestions for the timezone field (any IANA name is accepted)."""
    return tuple(sorted(available_timezones() - {"localtime"}))


@dataclass(frozen=True, slots=True)
class ScheduleForm:
    """The form's fields as text, exactly as shown or typed."""

    name: str = ""
    type: str = ""
    queue: str = "default"
    cron: str = ""
    timezone: str = "UTC"
    payload: str = "{}"
    description: str = ""
    misfire: str = "skip"
    enabled: bool = True
    error: str | None = None
    error_field: str | None = None

    @classmethod
    def of(cls, schedule: Schedule) -> ScheduleForm:
        return cls(
            name=schedule.name,
            type=schedule.type,
            queue=schedule.queue,
            cron=schedule.cron_expression,
            timezone=schedule.timezone,
            payload=json.dumps(schedule.payload, indent=2, ensure_ascii=False),
            description=schedule.description or "",
            misfire=schedule.misfire_policy,
            enabled=schedule.enabled,
        )

    @classmethod
    def posted(cls, form: dict[str, str], *, name: str | None = None) -> ScheduleForm:
        """The form as submitted; `name` is the edited schedule's (its name is not a
        field of the edit form)."""
        return cls(
            name=name if name is not None else form.get("name", "").strip(),
            type=form.get("type", "").strip(),
            queue=form.get("queue", "").strip(),
            cron=" ".join(form.get("cron", "").split()),
            timezone=form.get("timezone", "").strip(),
            payload=form.get("payload", ""),
            description=form.get("description", ""),
            misfire=form.get("misfire", "skip"),
            enabled=form.get("enabled") == "on",
        )

    def failed(self, exc: Exception) -> ScheduleForm:
        return replace(self, error=str(exc), error_field=getattr(exc, "field", None))

    def fields(self) -> dict[str, Any]:
        """The fields for pgjobs.ops; a ValidationError when the payload is not a JSON
        object (everything else is checked by the schedule store)."""
        text = self.payload.strip()
        try:
            payload = json.loads(text) if text else {}
        except ValueError as exc:
            raise ValidationError(f"payload is not valid JSON: {exc}", field="payload") from None
        except RecursionError:
            raise ValidationError("payload is nested too deeply", field="payload") from None
        if not isinstance(payload, dict):
            raise ValidationError("payload must be a JSON object", field="payload")
        return {
            "name": self.name,
            "type": self.type,
            "queue": self.queue or "default",
            "cron": self.cron,
            "timezone": self.timezone or "UTC",
            "payload": payload,
            "description": self.description.strip() or None,
            "misfire": self.misfire,
            "enabled": self.enabled,
        }

    def changes(self, current: Schedule) -> dict[str, Any]:
        """The fields this form changes in `current` (an edit audited as what it
        changed, not as every field of the form)."""
        wanted = self.fields()
        stored = {
            "type": current.type,
            "queue": current.queue,
            "cron": current.cron_expression,
            "timezone": current.timezone,
            "payload": current.payload,
            "description": current.description,
            "misfire": current.misfire_policy,
            "enabled": current.enabled,
        }
        return {key: wanted[key] for key in EDITABLE if wanted[key] != stored[key]}
