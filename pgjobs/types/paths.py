"""Confining payload paths to directories an operator allowed.

A payload is data from whoever may create jobs; it must not be able to make a worker
read or delete files elsewhere. A path is accepted only when its fully resolved form
(every symlink followed) lies inside one of the resolved allowed roots, so a symlink
that points out of a root is refused like any other outside path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pgjobs.types.payload import bad


def confine(raw: str, roots: Sequence[str], *, field: str, setting: str) -> Path:
    """The resolved `raw`, or `Discard` naming `field` when it is not safely inside `roots`."""
    if not os.path.isabs(raw):
        raise bad(field, f"must be an absolute path (got {raw!r})")
    if not roots:
        raise bad(field, f"not allowed: {setting} does not list any directory")
    if os.path.normpath(raw) == os.sep:
        raise bad(field, "refusing the root directory /")
    real = os.path.realpath(raw)
    if real == os.sep:
        raise bad(field, f"{raw} resolves to the root directory /")
    for root in roots:
        real_root = os.path.realpath(root)
        if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
            return Path(real)
    lexically_inside = any(
        os.path.normpath(raw) == os.path.normpath(root)
        or os.path.normpath(raw).startswith(os.path.normpath(root).rstrip(os.sep) + os.sep)
        for root in roots
    )
    if lexically_inside:
        raise bad(field, f"{raw} leads through a symlink to {real}, outside {setting}")
    raise bad(field, f"{raw} is outside the directories in {setting} ({os.pathsep.join(roots)})")
