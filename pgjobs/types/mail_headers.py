"""The `headers` a send-email payload may add, checked where the job is created and
again by the handler (a row written by SQL skips the first check).

Only `X-` headers may be added: From, To, Cc, Bcc, Reply-To, Sender, Subject, Date,
Message-ID, MIME-Version and Content-* come from the payload's own fields or from the
message's structure, and a second copy would change who it appears to come from or
how it is read. A name must be an RFC 5322 field name (printable ASCII without `:`),
a value one line: a line break in either would start a header of the caller's choice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# Everything str.splitlines() breaks on, and the other control characters but TAB.
_NOT_ONE_LINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def header_problem(name: str, value: Any) -> str | None:
    """Why `name: value` may not be added to a message, or None when it may."""
    if not _FIELD_NAME.fullmatch(name):
        return "is not a header name (printable ASCII without ':' or spaces)"
    if not name.lower().startswith("x-") or len(name) < 3:
        return "only X- headers may be added (From, To, Subject, ... have their own fields)"
    if isinstance(value, str) and _NOT_ONE_LINE.search(value):
        return "must be one line of text"
    return None


def headers_problem(payload: Any) -> tuple[str, str] | None:
    """(field, problem) for the first header a send-email payload may not add."""
    headers = payload.get("headers") if isinstance(payload, Mapping) else None
    if not isinstance(headers, Mapping):
        return None  # absent, or the handler reports the wrong type
    for name, value in headers.items():
        problem = header_problem(str(name), value)
        if problem is not None:
            return f"headers.{name!r}", problem
    return None
