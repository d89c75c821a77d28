"""How the REST API shows jobs: secrets masked (handlers get the real values)."""

from __future__ import annotations

from typing import Any

from pgjobs.models import Job
from pgjobs.ops import AttemptLog, JobPage
from pgjobs.redact import mask_json_text, mask_secrets, mask_text


def shown_job(job: Job) -> dict[str, Any]:
    """A job as the API shows it: secrets in its payload, results, metadata and error
    texts masked (handlers get the real values). No field of a job itself has a name
    that looks secret, so only the values inside them are touched."""
    out: dict[str, Any] = mask_secrets(job.to_dict())
    return out


def shown_page(page: JobPage) -> dict[str, Any]:
    out: dict[str, Any] = mask_secrets(page.to_dict())
    for summary in out["jobs"]:
        summary["payload_preview"] = mask_json_text(summary["payload_preview"] or "")
    return out


def shown_logs(logs: tuple[AttemptLog, ...]) -> list[dict[str, Any]]:
    """A job's log lines per attempt, with URL passwords and secret-looking values
    masked as in error texts."""
    out = []
    for attempt in logs:
        entry = attempt.to_dict()
        for line in entry["lines"]:
            line["message"] = mask_text(line["message"])
        out.append(entry)
    return out
