"""The queue health score of the spec's monitoring section, as a pure function."""

from __future__ import annotations

DEFAULT_CAPACITY = 1000


def health_score(
    *, waiting: int, active: int, failed: int, capacity: int = DEFAULT_CAPACITY
) -> int:
    """100 = healthy, 0 = critical.

    The spec's `calculateHealthScore`, rule for rule: a long waiting list costs 15 or 30,
    waiting jobs with none running (stalled processing) cost 40, and a failure share of
    the retained jobs above 10 % costs 20 plus another 30 above 25 %.
    """
    score = 100
    if waiting > capacity * 0.8:
        score -= 30
    elif waiting > capacity * 0.5:
        score -= 15
    if active == 0 and waiting > 0:
        score -= 40
    total = waiting + active + failed
    if total > 0:
        failure_rate = failed / total
        if failure_rate > 0.1:
            score -= 20
        if failure_rate > 0.25:
            score -= 30
    return max(0, score)
