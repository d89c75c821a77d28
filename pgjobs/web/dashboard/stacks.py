"""Stack traces for the job page: the handler's own frames in view, the frames of pgjobs
itself and of asyncio/threading folded away.

A failed attempt's trace is stored as text (`job_failures.error_stack`): Python's
`traceback.format_exception` output, cut to its last characters when long, or whatever
another producer wrote. Only the standard Python layout is recognised: a frame is a
line `  File "path", line N, in name` and the source lines indented below it. Runs of
internal frames become one fold; the innermost frame, where the exception was
raised, always stays in view. Text in any other shape (chained exceptions' headers,
exception groups, other languages) is kept verbatim, in order, so nothing of the
stored trace is lost or reordered.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

FRAME = re.compile(r'  File "(?P<path>[^"\n]*)", line \d+, in .*')
SOURCE = re.compile(r"    \S.*|    \s*[~^]+\s*")
# pgjobs' own modules: this package's directory (a trace written on this machine) or
# an installed pgjobs anywhere (one written by a worker elsewhere). Its examples are
# application code.
PACKAGE = str(Path(__file__).resolve().parents[2]) + os.sep
EXAMPLES = PACKAGE + "examples" + os.sep
INSTALLED = re.compile(r"[/\\](site|dist)-packages[/\\]pgjobs[/\\](?!examples[/\\])")
# The machinery a handler runs on: event loop, threads, executors, context managers.
RUNTIME = re.compile(
    r"[/\\]python3(\.\d+)?[/\\](asyncio[/\\]|concurrent[/\\]|threading\.py$|contextlib\.py$)"
)


@dataclass(frozen=True, slots=True)
class Part:
    """A piece of a trace: lines shown as they are, or folded internal frames."""

    text: str
    folded: bool = False
    label: str = ""


def _origin(path: str) -> str | None:
    """ "pgjobs" or "asyncio/threading" for internal frames, None for the user's."""
    mine = path.startswith(PACKAGE) and not path.startswith(EXAMPLES)
    if mine or INSTALLED.search(path):
        return "pgjobs"
    if RUNTIME.search(path):
        return "asyncio/threading"
    return None


def _label(origins: list[str]) -> str:
    n = len(origins)
    kinds = sorted(set(origins), key=lambda k: k != "pgjobs")
    noun = "frame" if n == 1 else "frames"
    return f"{n} {' and '.join(kinds)} {noun}"


def split_stack(text: str | None) -> tuple[Part, ...]:
    """The trace in parts, in order; one verbatim part when it has no frame of pgjobs
    or of the runtime to fold."""
    if not text:
        return ()
    lines = text.split("\n")
    # (origin or None, lines) per frame; plain lines are (``"text"``, [line]).
    items: list[tuple[str | None, list[str]]] = []
    i = 0
    while i < len(lines):
        match = FRAME.fullmatch(lines[i])
        if match is None:
            items.append(("text", [lines[i]]))
            i += 1
            continue
        frame = [lines[i]]
        i += 1
        while i < len(lines) and SOURCE.fullmatch(lines[i]):
            frame.append(lines[i])
            i += 1
        items.append((_origin(match["path"]), frame))
    frames = [n for n, (origin, _) in enumerate(items) if origin != "text"]
    if not frames:
        return (Part(text),)
    innermost = frames[-1]

    parts: list[Part] = []
    shown: list[str] = []
    folded: list[str] = []
    origins: list[str] = []

    def flush_shown() -> None:
        if shown:
            parts.append(Part("\n".join(shown)))
            shown.clear()

    def flush_folded() -> None:
        if folded:
            flush_shown()
            parts.append(Part("\n".join(folded), folded=True, label=_label(origins)))
            folded.clear()
            origins.clear()

    for n, (origin, block) in enumerate(items):
        if origin not in (None, "text") and n != innermost:
            folded.extend(block)
            origins.append(origin)
            continue
        flush_folded()
        shown.extend(block)
    flush_folded()
    flush_shown()
    if not any(p.folded for p in parts):
        return (Part(text),)
    return tuple(parts)
