"""Scenario 10: three hosts (network namespaces with a veth link each, tests/netns.py)
of two worker processes share one PostgreSQL and one Redis. One host is cut off for
longer than the lease while they drain a queue, then comes back: its jobs are rescued
by the others, its late outcomes are fenced out, every job completes exactly once, and
a per-second cron schedule fires exactly once per slot across the hosts throughout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.netns import unavailable
from tests.process.chaos.harness import Redis, assert_invariants
from tests.process.chaos.hosts import cut_off_host

REASON = unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"many hosts: {REASON}")


def test_a_host_cut_off_past_its_lease_is_fenced_out(
    chaos_db: str, redis_server: Redis, log_dir: Path
) -> None:
    report, figures = cut_off_host(
        chaos_db, redis_server.url, log_dir, hosts=3, processes=2, jobs=3000, cut_s=4.0
    )
    print(report, figures.text(), sep="\n")
    assert_invariants(report)
    assert not figures.problems(), figures.problems()
    # Every host ran jobs, and the cut-off one came back and went on working.
    assert set(figures.results_by_host) == {"host-0", "host-1", "host-2"}
    assert figures.victim_in_flight > 0
    assert figures.stale_runs >= 1
    assert figures.fenced_in_tx + figures.fenced_logged >= figures.stale_runs
    # The cron schedule kept firing through the cut, once per slot.
    assert figures.cron_fires_in_cut >= int(figures.cut_s) - 1
