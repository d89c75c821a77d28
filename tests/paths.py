"""Folders the tests refer to, wherever in tests/ a test file lives."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# Small applications the subprocess tests run (`--app worker_app:app` with this on PATH).
APPS = str(TESTS / "apps")
