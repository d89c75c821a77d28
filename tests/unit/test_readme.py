"""The README is the front door: short, and without figures (they live in docs/, each
with the command that produces it, so none can go stale in two places)."""

from __future__ import annotations

import re

from tests.paths import ROOT

README = (ROOT / "README.md").read_text()


def test_the_readme_stays_under_12_kb() -> None:
    assert len(README.encode()) < 12 * 1024


def test_the_readme_quotes_no_measured_figures() -> None:
    figures = re.findall(r"\d[\d,.]*\s*(?:jobs/s|jobs per second|ms\b|µs|MB/s)", README)
    assert figures == []


def test_the_readme_links_the_docs_it_promises() -> None:
    for page in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / page).exists(), page
