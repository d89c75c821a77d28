"""Benchmark: the job search with a million jobs in the table.

Creates a scratch database and fills it (generate_series, one statement per 200,000
rows) with `--jobs` jobs over five queues and four types: 84 % completed, 15 % failed
with one of twelve error messages (the rarest on 0.1 % of the failed jobs), 1 %
waiting; every payload carries a user_id (one of 100,000), an address and an order
number. Then, with the web app in this process (httpx over ASGI, lifespan run), each
search below is run `--runs` times through the dashboard's search page
(/dashboard/search?q=...) and once more through GET /api/jobs?q=, and timed from
request to the last byte: min / median / p95 / max. Acceptance: every median under
200 ms.

Prints the figures and writes a JSON record to bench-results/. Usage:

    python -m bench.search [--jobs 1000000] [--runs 20] [--keep] [--quick]

`--quick` (100,000 jobs, 5 runs) is a smoke run. The server is
PGJOBS_BENCH_DATABASE_URL, else PGJOBS_TEST_DATABASE_URL, else DATABASE_URL (the scratch
database is created beside it and dropped afterwards unless --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import ROOT, scratch, server_url, summary, timed_get, web_client, write

BATCH = 200_000
BUDGET_MS = 200.0
ERRORS = (
    # (share of failed jobs in 1000ths, message)
    (300, "TimeoutError: request timed out after 30 s"),
    (200, "ConnectError: connection refused by upstream"),
    (150, "ValueError: bad input in field amount"),
    (100, "HTTPStatusError: server answered 503 Service Unavailable"),
    (80, "KeyError: 'customer'"),
    (60, "SMTPRecipientsRefused: mailbox unavailable"),
    (50, "PermissionError: access denied to bucket reports"),
    (30, "OperationalError: could not serialize access"),
    (20, "RuntimeError: worker memory limit reached"),
    (8, "IntegrityError: duplicate key value violates unique constraint"),
    (1, "DeadlockDetected: deadlock detected while updating invoices"),
    (1, "ZeroDivisionError: division by zero in tax calculation"),
)
FILL = """
INSERT INTO jobs (type, queue, status, payload, attempts, max_attempts, created_at,
                  started_at, completed_at, run_at, last_error)
SELECT (ARRAY['send-email', 'http-request', 'resize-image', 'report'])[1 + i %% 4],
       (ARRAY['default', 'emails', 'reports', 'high-priority', 'low-priority'])[1 + i %% 5],
       CASE WHEN i %% 100 = 0 THEN 'pending'
            WHEN i %% 100 < 16 THEN 'failed'
            ELSE 'completed' END,
       jsonb_build_object('user_id', (i * 7919) %% 100000, 'to', 'user' || i || '@example.com',
                          'order', jsonb_build_object('number', i, 'total', i %% 500)),
       1, 3, t, t, CASE WHEN i %% 100 <> 0 THEN t END, t,
       CASE WHEN i %% 100 BETWEEN 1 AND 15 THEN
            (SELECT e.message FROM unnest(%(shares)s::int[], %(messages)s::text[])
                                   WITH ORDINALITY AS e(upto, message, n)
             WHERE (i / 100 * 7) %% 1000 < e.upto ORDER BY e.n LIMIT 1)
       END
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i,
     LATERAL (SELECT now() - make_interval(secs => (%(total)s - i) * 0.05) AS t) x
"""


def cumulative_shares() -> tuple[list[int], list[str]]:
    upto, total = [], 0
    for share, _ in ERRORS:
        total += share
        upto.append(total)
    return upto, [message for _, message in ERRORS]


def fill(url: str, jobs: int) -> dict[str, Any]:
    started = time.perf_counter()
    shares, messages = cumulative_shares()
    with psycopg.connect(url, autocommit=True) as conn:
        for first in range(1, jobs + 1, BATCH):
            last = min(jobs, first + BATCH - 1)
            params = {
                "first": first,
                "last": last,
                "total": jobs,
                "shares": shares,
                "messages": messages,
            }
            conn.execute(FILL, params)
            print(f"  {last:,} jobs", file=sys.stderr)
        print("  VACUUM ANALYZE jobs", file=sys.stderr)
        conn.execute("VACUUM (ANALYZE) jobs")
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE last_error IS NOT NULL) FROM jobs"
        ).fetchone()
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('jobs'))").fetchone()
        sample = conn.execute(
            "SELECT id::text FROM jobs ORDER BY created_at DESC OFFSET 1000 LIMIT 1"
        ).fetchone()
    return {
        "rows": row[0] if row else None,
        "failed_with_error": row[1] if row else None,
        "size": size[0] if size else None,
        "fill_s": round(time.perf_counter() - started, 1),
        "sample_id": sample[0] if sample else "",
    }


def searches(jobs: int, sample_id: str) -> dict[str, str]:
    """The search shapes timed, by name."""
    return {
        "payload_field_rare": "user_id=4242",
        "payload_text_field": f"to=user{jobs // 2}@example.com",
        "payload_nested": f"order.number={jobs // 3}",
        "error_rare_phrase": 'error:"deadlock detected"',
        "error_common_word": "timed",
        "error_and_type": "refused type:http-request",
        "type_and_status": "type:report status:failed",
        "id_prefix": f"id:{sample_id[:13]}",
        "no_match": "user_id=-1",
    }


async def measure(url: str, cases: dict[str, str], runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with web_client(url) as client:
        for name, q in cases.items():
            samples = []
            for _ in range(runs):
                ms, _ = await timed_get(client, "/dashboard/search", {"q": q})
                samples.append(ms)
            api_ms, response = await timed_get(client, "/api/jobs", {"q": q})
            found = len(response.json()["jobs"])
            out[name] = {"q": q, "found": found, "page": summary(samples)}
            out[name]["api_ms"] = round(api_ms, 1)
            print(
                f"  {name:<20} {q!r:<36} {found:>3} found  median "
                f"{out[name]['page']['median_ms']:>6} ms  max {out[name]['page']['max_ms']} ms",
                file=sys.stderr,
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs to create")
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each search")
    parser.add_argument("--quick", action="store_true", help="100,000 jobs, 5 runs")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.runs = min(args.jobs, 100_000), min(args.runs, 5)

    with scratch(server_url(), keep=args.keep) as db:
        print(f"filling {db.name} with {args.jobs:,} jobs", file=sys.stderr)
        table = fill(db.url, args.jobs)
        cases = searches(args.jobs, str(table.pop("sample_id")))
        results = asyncio.run(measure(db.url, cases, args.runs))

    slow = [name for name, r in results.items() if r["page"]["median_ms"] >= BUDGET_MS]
    record = {"jobs_table": table, "budget_ms": BUDGET_MS, "results": results, "slow": slow}
    print(json.dumps(record, indent=2))
    path = write(args.out, "search", db.server_version, **record)
    print(f"written to {path}", file=sys.stderr)
    if slow:
        print(f"over {BUDGET_MS:.0f} ms (median): {', '.join(slow)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
