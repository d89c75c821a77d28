"""Benchmark: memory of a worker running a large `database-backup` job.

Creates a scratch database holding about `--mb` MB of table data, then runs a
`database-backup` job (custom format, gzip, AES-256-GCM by default) in this process
through the real worker (`App.drain`) and reports how much this process's resident
memory grew while it ran: the peak RSS (VmHWM, reset just before the run through
/proc/self/clear_refs) minus the RSS before the run. pg_dump is a child process and
not counted; it is pg_dump's output flowing through the worker that must not pile up.

Prints the figures and writes a JSON record to bench-results/. Usage:

    python bench/backup_memory.py [--mb 200] [--plain] [--no-compress] [--no-encrypt]
                                  [--out bench-results]

The server is PGJOBS_BENCH_DATABASE_URL, else PGJOBS_TEST_DATABASE_URL, else DATABASE_URL
(the scratch database is created beside it and dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from common import ROOT, scratch, server_url

from pgjobs.app import App
from pgjobs.config import load_settings

ROW_BYTES = 1024  # 32 md5 hex digests per row: text that compresses only about 2:1
KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakRss:
    """Peak resident memory of this process over a stretch of time.

    Uses the kernel's own high-water mark when it can be reset; otherwise samples
    VmRSS every few milliseconds."""

    def __init__(self) -> None:
        self.baseline_kb = 0
        self.peak_kb = 0
        self._exact = False
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> PeakRss:
        self.baseline_kb = status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # resets VmHWM to the current RSS
            self._exact = True
        except OSError:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        self.peak_kb = self.baseline_kb
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_kb = max(self.peak_kb, status_kb("VmRSS"))

    def __exit__(self, *exc: object) -> None:
        if self._exact:
            self.peak_kb = status_kb("VmHWM")
        else:
            self._stop.set()
            assert self._sampler is not None
            self._sampler.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak_kb - self.baseline_kb) / 1024

    @property
    def method(self) -> str:
        return "VmHWM" if self._exact else "sampled VmRSS"


def fill(url: str, megabytes: int) -> int:
    rows = megabytes * 1024 * 1024 // ROW_BYTES
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE payloads (id bigint PRIMARY KEY, data text NOT NULL)")
        step = 20_000
        for start in range(1, rows + 1, step):
            conn.execute(
                """
                INSERT INTO payloads
                SELECT i, (SELECT string_agg(md5(i::text || '/' || j || random()::text), '')
                           FROM generate_series(1, 32) AS j)
                FROM generate_series(%(a)s::bigint, %(b)s::bigint) AS i
                """,
                {"a": start, "b": min(rows, start + step - 1)},
            )
    return rows


async def backup_once(app: App, payload: dict[str, Any]) -> dict[str, Any]:
    job = await app.create("database-backup", payload, attempts=1, timeout=3_600_000)
    await app.drain()
    done = await app.get(job.id)
    if done.status != "completed":
        raise SystemExit(f"backup failed: {done.last_error}")
    result: dict[str, Any] = done.result
    return result


async def measure(
    url: str, megabytes: int, payload: dict[str, Any], folder: Path
) -> dict[str, Any]:
    settings = load_settings(
        {
            "DATABASE_URL": url,
            "LOG_LEVEL": "warning",
            "JOBS_BACKUP_DIR": str(folder),
            "JOBS_BACKUP_ENCRYPTION_KEY": KEY,
        },
        env_file=None,
    )
    async with App(settings) as app:
        # Warm up on the still small database: imports, pools and the worker's own
        # machinery are in place before the baseline is taken.
        warm = await backup_once(app, payload)
        await asyncio.to_thread(os.unlink, warm["path"])
        started = time.perf_counter()
        rows = await asyncio.to_thread(fill, url, megabytes)
        fill_s = time.perf_counter() - started
        started = time.perf_counter()
        with PeakRss() as rss:
            result = await backup_once(app, payload)
        seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "fill_seconds": round(fill_s, 2),
        "dump_bytes": result["dumpBytes"],
        "file_bytes": result["size"],
        "backup_seconds": round(seconds, 2),
        "dump_mb_per_s": round(result["dumpBytes"] / 1048576 / seconds, 1),
        "rss_baseline_mb": round(rss.baseline_kb / 1024, 1),
        "rss_peak_mb": round(rss.peak_kb / 1024, 1),
        "rss_growth_mb": round(rss.growth_mb, 1),
        "rss_method": rss.method,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="table data to create, in MB")
    parser.add_argument("--plain", action="store_true", help="plain SQL instead of custom")
    parser.add_argument("--no-compress", action="store_true")
    parser.add_argument("--no-encrypt", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)
    payload = {
        "format": "plain" if args.plain else "custom",
        "compress": not args.no_compress,
        "encrypt": not args.no_encrypt,
    }

    with (
        scratch(server_url()) as db,
        tempfile.TemporaryDirectory(prefix="pgjobs-backup-bench-") as folder,
    ):
        figures = asyncio.run(measure(db.url, args.mb, payload, Path(folder)))

    print(
        f"database-backup of {figures['dump_bytes'] / 1048576:.0f} MB of dump "
        f"({', '.join(k for k, v in payload.items() if v is True) or 'no layers'}, "
        f"{payload['format']}): {figures['backup_seconds']} s, "
        f"{figures['dump_mb_per_s']} MB/s, file {figures['file_bytes'] / 1048576:.0f} MB"
    )
    print(
        f"worker RSS: {figures['rss_baseline_mb']} MB before, {figures['rss_peak_mb']} MB peak, "
        f"growth {figures['rss_growth_mb']} MB ({figures['rss_method']})"
    )
    record = {
        "benchmark": "backup_memory",
        "at": datetime.now(UTC).isoformat(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "postgres": db.server_version,
        "megabytes": args.mb,
        "payload": payload,
        **figures,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"backup_memory-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
