"""bench/single_create.py runs its four loops in interleaved rounds, each storing the jobs
it says it timed (no rate is asserted beyond "each loop ran")."""

from __future__ import annotations

import psycopg

from bench import single_create


def test_every_loop_runs_each_round_and_stores_its_jobs(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        before = conn.execute("SELECT count(*) FROM jobs").fetchone()

    rates = single_create.measure(db_url, rounds=2, block=5)

    assert list(rates) == list(single_create.LOOPS)
    assert all(len(values) == 2 and min(values) > 0 for values in rates.values())
    with psycopg.connect(db_url) as conn:
        after = conn.execute("SELECT count(*) FROM jobs").fetchone()
    # 2 rounds x 4 loops x 5 jobs, and the two warm-up creates.
    assert before is not None and after is not None
    assert after[0] - before[0] == 2 * 4 * 5 + 2
    table = single_create.summarize(rates)
    assert table[single_create.LOOPS[0]]["ratio_to_sync_insert"] == 1.0
