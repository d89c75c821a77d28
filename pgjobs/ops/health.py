"""The database health warnings, as pure functions (the queue health score is
`pgjobs.stats.health_score`)."""

from __future__ import annotations

# A queue table churns: every job leaves dead row versions behind, and vacuum may only
# remove those that no open transaction can still see. A transaction open this long
# (often an idle session in a REPEATABLE READ or SERIALIZABLE transaction) lets dead
# versions pile up and slows every claim that has to step over them.
LONG_TRANSACTION_S = 30.0


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
