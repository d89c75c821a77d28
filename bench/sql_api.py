"""Benchmark: the SQL API against the Python producer.

Creates a scratch database, installs the schema, then times:

* `SELECT count(*) FROM pgjobs_enqueue_many($1)` of N jobs in one statement;
* `create_many_sync` of the same N jobs (the Python bulk path, COPY);
* M single `SELECT * FROM pgjobs_enqueue(...)` calls against M `App.create_sync` calls
  (one round trip each: whether the Python producer could call the SQL function).

Prints jobs/s. Usage:

    python bench/sql_api.py [--count 50000] [--singles 2000]

The server is PGJOBS_BENCH_DATABASE_URL, else PGJOBS_TEST_DATABASE_URL, else DATABASE_URL,
else the local test server.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from pgjobs.app import App
from pgjobs.config import load_settings
from pgjobs.db import install_schema

SERVER = (
    os.environ.get("PGJOBS_BENCH_DATABASE_URL")
    or os.environ.get("PGJOBS_TEST_DATABASE_URL")
    or os.environ.get("DATABASE_URL")
    or "postgresql://postgres@127.0.0.1:5432/postgres"
)


def timed(what: str, count: int, run: Callable[[], Any]) -> float:
    begin = time.perf_counter()
    run()
    seconds = time.perf_counter() - begin
    rate = count / seconds
    print(f"{what}: {count} jobs in {seconds:.2f} s = {rate:,.0f} jobs/s")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--singles", type=int, default=2_000)
    args = parser.parse_args()
    name = f"pgjobs_bench_{uuid.uuid4().hex[:12]}"
    url = urlunsplit(urlsplit(SERVER)._replace(path=f"/{name}"))
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            install_schema(conn)
            batch = [
                {"type": "bench", "queue": "default", "payload": {"i": i},
                 "options": {"priority": "normal"}}
                for i in range(args.count)
            ]  # fmt: skip
            text = json.dumps(batch)
            timed(
                "pgjobs_enqueue_many (one statement)",
                args.count,
                lambda: conn.execute(
                    "SELECT count(*) FROM pgjobs_enqueue_many(%s::jsonb)", (text,)
                ).fetchone(),
            )
            delayed = json.dumps([{**b, "options": {"delay": 3_600_000}} for b in batch])
            timed(
                "pgjobs_enqueue_many, delayed jobs",
                args.count,
                lambda: conn.execute(
                    "SELECT count(*) FROM pgjobs_enqueue_many(%s::jsonb)", (delayed,)
                ).fetchone(),
            )

            def singles_sql() -> None:
                for i in range(args.singles):
                    conn.execute(
                        "SELECT * FROM pgjobs_enqueue('bench', %s::jsonb, %s::jsonb)",
                        (json.dumps({"i": i}), '{"priority": "high"}'),
                    ).fetchone()

            timed("pgjobs_enqueue, one call per job", args.singles, singles_sql)
        app = App(load_settings({"DATABASE_URL": url}, env_file=None))
        try:
            timed("App.create_many_sync (Python, COPY)", args.count,
                  lambda: app.create_many_sync(batch))  # fmt: skip

            def singles_python() -> None:
                for i in range(args.singles):
                    app.create_sync("bench", {"i": i}, priority="high")

            timed("App.create_sync, one call per job", args.singles, singles_python)
        finally:
            app.close_sync()
    finally:
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


if __name__ == "__main__":
    main()
