"""The queue health score of the spec's monitoring section, and the database health
warnings, as pure functions."""

from __future__ import annotations

DEFAULT_CAPACITY = 1000
# A queue table churns: every job leaves dead row versions behind, and vacuum may only
# remove those that no open transaction can still see. A transaction open this long
# (often an idle session in a REPEATABLE READ or SERIALIZABLE transaction) lets dead
# versions pile up and slows every claim that has to step over them.
LONG_TRANSACTION_S = 30.0


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


def long_transaction_warning(
    oldest_transaction_s: float | None, threshold_s: float = LONG_TRANSACTION_S
) -> str | None:
    """One line for operators when the oldest open transaction holds back vacuum."""
    if oldest_transaction_s is None or oldest_transaction_s < threshold_s:
        return None
    return (
        f"warning: a transaction has been open for {oldest_transaction_s:.0f}s; until it "
        "ends vacuum cannot remove dead jobs and claims slow down (find it in "
        "pg_stat_activity by xact_start)"
    )
