"""Files shipped beside the code: schema.sql, migrations/, views.sql and the dashboard
templates.

In a wheel they live in `pgjobs/_data/`; in a source checkout (editable install) they
stay at the repository root, one folder above the package.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_path(name: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"pgjobs is missing its data file {name!r}; reinstall the package")


def read_text(name: str) -> str:
    return data_path(name).read_text(encoding="utf-8")
