"""The one exception root of pgjobs, and the small signals a handler may raise."""

from __future__ import annotations


class PgJobsError(Exception):
    """Base of every error pgjobs raises."""

    #: short machine-readable code used by the API's error body
    code = "error"


class ConfigError(PgJobsError):
    """A setting has an invalid value."""

    code = "invalid_setting"

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class ValidationError(PgJobsError):
    """A job option or payload is invalid; nothing was written."""

    code = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class JobNotFound(PgJobsError):
    """No job has that id."""

    code = "not_found"


class NotFound(PgJobsError):
    """A named object (queue, schedule, ...) does not exist."""

    code = "not_found"


class Conflict(PgJobsError):
    """The request conflicts with the current state (e.g. retrying a running job)."""

    code = "conflict"


class ServiceUnavailable(PgJobsError):
    """PostgreSQL (or Redis, where required) cannot be reached."""

    code = "unavailable"


class SchemaError(PgJobsError):
    """A migration or the views could not be applied; the whole install was rolled back."""

    code = "schema_error"


class HandlerSignal(Exception):
    """Base of the exceptions a handler raises to steer its job's outcome."""


class Discard(HandlerSignal):
    """Fail the job now, without further retries."""

    def __init__(self, reason: str = "discarded") -> None:
        super().__init__(reason)
        self.reason = reason


def bad_field(field: str, problem: str) -> Discard:
    """A bad payload field: `Discard("<field>: <problem>")`, so the job fails at once,
    naming the field. The built-in types and the backup helpers both report with it."""
    return Discard(f"{field}: {problem}")


class RetryIn(HandlerSignal):
    """Run the job again after `seconds`, without counting this run as a failure."""

    def __init__(self, seconds: float, reason: str = "") -> None:
        if seconds < 0:
            raise ValueError("RetryIn needs a non-negative number of seconds")
        super().__init__(reason or f"retry in {seconds} s")
        self.seconds = seconds
        self.reason = reason


class StaleRun(PgJobsError):
    """This run no longer owns its job (it was rescued, cancelled or finished elsewhere)."""

    code = "stale_run"


class JobFailed(PgJobsError):
    """An awaited job ended without a result: it failed for good, or was cancelled.

    `str(exc)` and `message` are the job's last error ("cancelled" for a cancel)."""

    code = "job_failed"

    def __init__(self, message: str, *, job_id: object, status: str) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.status = status
