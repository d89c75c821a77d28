"""How the REST API and the dashboard show jobs: secrets masked (handlers get the real
values). The API's JSON is masked as a whole (`shown_job`, `shown_page`); the
dashboard's pages read fields one by one, so they get the same models with every text
field masked the same way (`masked_job`, `masked_summary`, `masked_group`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pgjobs.models import Job, JobFailure
from pgjobs.ops import AttemptLog, FailureGroup, JobPage, JobSummary
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


def _masked(text: str | None) -> str | None:
    return None if text is None else mask_text(text)


def masked_job(job: Job) -> Job:
    """`job` with its error texts, stack traces, progress message and keys masked as
    shown_job masks them. Its payload, results and metadata stay as they are: the
    dashboard masks them as it formats them."""
    return replace(
        job,
        last_error=_masked(job.last_error),
        progress_message=_masked(job.progress_message),
        unique_key=_masked(job.unique_key),
        rate_limit_key=_masked(job.rate_limit_key),
        failures=tuple(_masked_failure(f) for f in job.failures),
    )


def _masked_failure(failure: JobFailure) -> JobFailure:
    return replace(
        failure,
        error_message=_masked(failure.error_message),
        error_stack=_masked(failure.error_stack),
    )


def masked_summary(summary: JobSummary) -> JobSummary:
    """A listed job with its texts masked as shown_page masks them (the payload preview
    is masked where the list formats it)."""
    return replace(
        summary,
        last_error=_masked(summary.last_error),
        progress_message=_masked(summary.progress_message),
    )


def masked_group(group: FailureGroup) -> FailureGroup:
    """A failure group with its error line masked as its jobs' last errors are."""
    return replace(group, error_line=mask_text(group.error_line))
