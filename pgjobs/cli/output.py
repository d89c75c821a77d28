"""Everything the CLI prints goes through here, with control characters made visible.

Job types are validated, but error messages, progress messages, queue names from
older installs, schedule names and anything else read from the database may hold an
escape sequence; printed raw, `\\x1b]0;...\\x07` retitles the operator's terminal and
`\\x1b[2J` clears it (other sequences can rewrite what earlier lines said). Such
characters are printed as `\\x1b`-style escapes instead.
"""

from __future__ import annotations

import re

import click

# C0 and C1 controls and DEL, the line and paragraph separators, and the bidirectional
# overrides that reorder how a line reads.
_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# Text laid out by the CLI itself (tables, reports) keeps its newlines and tabs.
_IN_BLOCK = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def one_line(text: str) -> str:
    """`text` for one line of output: every control character escaped, newlines too."""
    return _IN_LINE.sub(_escape, text)


def block(text: str) -> str:
    """`text` of several lines: control characters escaped except newline and tab."""
    return _IN_BLOCK.sub(_escape, text)


def echo(text: str = "", *, err: bool = False) -> None:
    click.echo(block(text), err=err)
