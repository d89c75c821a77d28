"""The input rules every surface shares: name patterns, size limits and page sizes.

The Python API (pgjobs.producer.options and the services), the CLI, the REST handlers and the
OpenAPI document (pgjobs.web.shapes) all import these; none keeps a copy, so a rule
cannot differ between them. SQL cannot import Python: the checks in schema.sql repeat
the patterns, and tests/unit/test_contract.py fails when they stop being the same text.

This module imports nothing from pgjobs, so that any module can import it.
"""

from __future__ import annotations

import re

# ------------------------------------------------------------------ names

MAX_QUEUE_NAME_LENGTH = 100
QUEUE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._:-]{0,99}$"
QUEUE_NAME = re.compile(QUEUE_NAME_PATTERN)

# Job types name the handlers that code registers: letters (either case), digits and
# . _ : -, so a type never carries quotes, spaces or slashes into logs, metric labels
# or file names.
MAX_TYPE_LENGTH = 100
JOB_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"
JOB_TYPE = re.compile(JOB_TYPE_PATTERN)

SCHEDULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}$"
SCHEDULE_NAME = re.compile(SCHEDULE_NAME_PATTERN)

# Unique keys, rate-limit keys and flow refs.
MAX_KEY_LENGTH = 255

# ------------------------------------------------------------------ job options

MAX_PRIORITY = 1_000_000
MAX_ATTEMPTS = 1000
MAX_DELAY_MS = 10 * 365 * 86_400_000  # ten years
MAX_TIMEOUT_MS = 30 * 86_400_000  # thirty days
MAX_BACKOFF_STEPS = 100
# The documented bound of a job's dependsOn list. Not enforced yet: pgjobs.producer.options
# accepts longer lists (the OpenAPI document has said 100 since it was written).
MAX_DEPENDENCIES = 100

# ------------------------------------------------------------------ payloads

# Containers inside containers, the outermost object counting as one. The SQL check
# (pgjobs_json_too_deep in schema.sql) uses the same number.
MAX_JSON_DEPTH = 100
# The payload size limit is a setting: JOBS_MAX_PAYLOAD_BYTES (pgjobs.config).

# ------------------------------------------------------------------ batches and pages

MIN_LIMIT, MAX_LIMIT, DEFAULT_LIMIT = 1, 500, 50  # job listing page size
MAX_SEARCH_CHARS = 500  # a job search query (pgjobs.ops.search)
MAX_BULK = 10_000  # jobs in one bulk create
MAX_FLOW_JOBS = 10_000  # jobs in one flow created through the API
DEFAULT_WINDOW_HOURS = 24.0  # statistics window
MAX_WINDOW_HOURS = 24 * 366

# ------------------------------------------------------------------ queues and schedules

MAX_RATE_JOBS = 100_000  # a rate limit's `max`
MAX_RATE_DURATION_MS = 86_400_000  # a rate limit's `duration`
MAX_DESCRIPTION = 10_000
MAX_CATCH_UP = 10_000

# ------------------------------------------------------------------ HTTP

MAX_QUERY_PARAM_LENGTH = 1000
WAIT_DEFAULT_S = 30.0  # GET /api/jobs/{id}/wait
WAIT_MAX_S = 300.0
