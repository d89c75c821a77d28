"""pgjobs: background jobs for Python whose queue is a PostgreSQL table."""

from __future__ import annotations

from pgjobs._version import __version__
from pgjobs.app import App, HandlerSpec
from pgjobs.clock import Clock, FrozenClock
from pgjobs.config import Settings, load_settings
from pgjobs.context import JobContext
from pgjobs.errors import (
    ConfigError,
    Conflict,
    Discard,
    JobFailed,
    JobNotFound,
    NotFound,
    PgJobsError,
    RetryIn,
    ServiceUnavailable,
    StaleRun,
    ValidationError,
)
from pgjobs.models import PRIORITIES, Job, JobFailure, JobResult
from pgjobs.producer.flows import CreatedFlow
from pgjobs.signals.events import JobEvent

__all__ = [
    "PRIORITIES",
    "App",
    "Clock",
    "ConfigError",
    "Conflict",
    "CreatedFlow",
    "Discard",
    "FrozenClock",
    "HandlerSpec",
    "Job",
    "JobContext",
    "JobEvent",
    "JobFailed",
    "JobFailure",
    "JobNotFound",
    "JobResult",
    "NotFound",
    "PgJobsError",
    "RetryIn",
    "ServiceUnavailable",
    "Settings",
    "StaleRun",
    "ValidationError",
    "__version__",
    "load_settings",
]
