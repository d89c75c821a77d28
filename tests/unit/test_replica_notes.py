"""How far behind a read replica is, and the line that says where a read ran."""

from __future__ import annotations

import math

import pytest

from pgjobs.replica import (
    CANCELLED,
    LAGGING,
    UNAVAILABLE,
    ReadLog,
    ReadSource,
    current_reads,
    observe_reads,
    replica_lag,
)


@pytest.mark.parametrize(
    ("bytes_behind", "replay_age_s", "since_caught_up_s", "lag"),
    [
        # Replayed up to the primary's position: up to date, however old its last
        # commit (an idle primary commits nothing).
        (0, 3600.0, None, 0.0),
        (0, None, None, 0.0),
        # Behind: the smaller of the two upper bounds.
        (100, 3600.0, 2.5, 2.5),
        (100, 1.5, 30.0, 1.5),
        (100, None, 4.0, 4.0),
        (100, 7.0, None, 7.0),
        # Behind, and nothing to bound it by: unknown, never "up to date".
        (100, None, None, math.inf),
    ],
)
def test_replica_lag(
    bytes_behind: float, replay_age_s: float | None, since_caught_up_s: float | None, lag: float
) -> None:
    assert replica_lag(bytes_behind, replay_age_s, since_caught_up_s) == lag


@pytest.mark.parametrize(
    ("source", "note"),
    [
        (ReadSource(None, 0.0), "read from a replica: up to date"),
        (ReadSource(None, 0.02), "read from a replica: under 0.1 s behind"),
        (ReadSource(None, 2.345), "read from a replica: 2.3 s behind"),
        (ReadSource(LAGGING, 45.2), "replica 45 s behind: reading from the primary"),
        (ReadSource(LAGGING, math.inf), "replica behind: reading from the primary"),
        (ReadSource(UNAVAILABLE), "replica unavailable: reading from the primary"),
        (ReadSource(CANCELLED), "replica cancelled the read: reading from the primary"),
    ],
)
def test_notes(source: ReadSource, note: str) -> None:
    assert source.note == note
    assert source.headers()["X-Read-Note"] == note
    assert source.headers()["X-Read-From"] == ("replica" if source.fallback is None else "primary")


def test_lag_header_only_when_measured() -> None:
    assert ReadSource(None, 1.25).headers()["X-Replica-Lag"] == "1.250"
    assert "X-Replica-Lag" not in ReadSource(UNAVAILABLE).headers()
    assert "X-Replica-Lag" not in ReadSource(LAGGING, math.inf).headers()


def test_a_request_shows_its_worst_read() -> None:
    assert ReadLog().note is None
    fresh, stale = ReadSource(None, 0.0), ReadSource(None, 3.0)
    assert ReadLog([fresh, stale, fresh]).summary == stale
    lagging, down = ReadSource(LAGGING, 40.0), ReadSource(UNAVAILABLE)
    assert ReadLog([stale, lagging]).summary == lagging
    assert ReadLog([lagging, down, stale]).summary == down


def test_observed_blocks_nest() -> None:
    assert current_reads() is None
    with observe_reads() as outer:
        assert current_reads() is outer
        with observe_reads() as inner:
            assert current_reads() is inner
        assert current_reads() is outer
    assert current_reads() is None
