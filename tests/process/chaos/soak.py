"""`bin/soak`: the fault-injection scenarios at full size, with a table of figures.

    bin/soak                      # full size: 100,000 jobs, 10 minutes, 5 restarts, ...
    bin/soak --quick              # the CI sizes, for a smoke run
    bin/soak --only 1,3           # some scenarios only (9: the phased run)
    bin/soak --out soak.md        # also write the table (Markdown) to a file
    bin/soak --hosts 3            # many hosts: 1, 2, 3 hosts x 2 processes draining
                                  # 100,000 no-op jobs each, then one host cut off

Each scenario runs in a fresh database of a private PostgreSQL cluster (Debian's
initdb/pg_ctl; `--database-url` uses an existing server instead, except for the restart
scenario and the phased run, which always need a cluster of their own). Exit status 1
when an invariant broke.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pgjobs._version import __version__
from tests.netns import Hosts, unavailable
from tests.process.chaos import hosts, scenarios
from tests.process.chaos.harness import Cluster, Redis, Report, create_database, drop_database
from tests.process.chaos.hosts import CutFigures, RoundFigures
from tests.process.chaos.phases import PhaseFigures, phased_run


@dataclass(frozen=True)
class Sizes:
    kill9_jobs: int
    terminate_s: float
    terminate_rate: float
    restarts: int
    restart_jobs: int
    redis_jobs: int
    innocents: int
    hold_s: float
    recovery_s: float
    poison_jobs: int
    poison_count: int
    poison_s: float
    phase_window_s: float
    phase_rate: float
    hosts_jobs: int
    hosts_cut_jobs: int
    hosts_cut_s: float


FULL = Sizes(
    kill9_jobs=100_000,
    terminate_s=600,
    terminate_rate=120,
    restarts=5,
    restart_jobs=6_000,
    redis_jobs=6_000,
    innocents=1_000,
    hold_s=180,
    recovery_s=120,
    poison_jobs=10_000,
    poison_count=10,
    poison_s=60,
    phase_window_s=30,
    phase_rate=150,
    hosts_jobs=100_000,
    hosts_cut_jobs=30_000,
    hosts_cut_s=8,
)
QUICK = Sizes(
    kill9_jobs=4_000,
    terminate_s=10,
    terminate_rate=80,
    restarts=2,
    restart_jobs=1_200,
    redis_jobs=1_200,
    innocents=200,
    hold_s=36,
    recovery_s=8,
    poison_jobs=600,
    poison_count=3,
    poison_s=6,
    phase_window_s=3,
    phase_rate=150,
    hosts_jobs=3_000,
    hosts_cut_jobs=3_000,
    hosts_cut_s=4,
)


class Soak:
    def __init__(self, sizes: Sizes, admin_url: str | None, keep: bool) -> None:
        self.sizes = sizes
        self.keep = keep
        self.cluster: Cluster | None = None
        self.admin_url = admin_url
        self.reports: list[Report] = []
        self.details: list[str] = []
        self.phase_figures: list[PhaseFigures] = []
        self.rounds: list[RoundFigures] = []
        self.cut_figures: CutFigures | None = None
        self.logs = Path(tempfile.mkdtemp(prefix="pgjobs-soak-"))

    def server(self) -> str:
        if self.admin_url is None:
            self.cluster = Cluster.start()
            self.admin_url = self.cluster.url
        return self.admin_url

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()

    def run(
        self,
        number: int,
        name: str,
        body: Callable[[str, Path], None],
        admin: str | None = None,
    ) -> None:
        """Run `body(db_url, log_dir)` in a new database of `admin`'s server (default:
        the soak's shared one)."""
        log_dir = self.logs / f"scenario-{number}"
        log_dir.mkdir()
        admin = admin or self.server()
        db_url = create_database(admin)
        began = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            body(db_url, log_dir)
        finally:
            if not self.keep:
                drop_database(admin, db_url)
        print(f"   done in {time.monotonic() - began:.0f} s", flush=True)

    def add(self, report: Report) -> None:
        self.reports.append(report)
        problems = report.violations()
        print("   " + ("OK" if not problems else f"VIOLATIONS: {problems}"), flush=True)
        for note in report.notes:
            print(f"   {note}", flush=True)

    # ---------------------------------------------------------------- scenarios

    def kill9(self) -> None:
        def body(db_url: str, log_dir: Path) -> None:
            self.add(scenarios.kill9(db_url, log_dir, jobs=self.sizes.kill9_jobs, timeout=7200))

        self.run(1, "kill -9 every 2 s", body)

    def terminate(self) -> None:
        def body(db_url: str, log_dir: Path) -> None:
            self.add(
                scenarios.terminate_connections(
                    db_url,
                    log_dir,
                    duration=self.sizes.terminate_s,
                    rate=self.sizes.terminate_rate,
                    every=5.0,
                    timeout=1800,
                )
            )
            figures = scenarios.kill_listener(db_url, log_dir, probes=10, poll_ms=5000)
            self.details.append(
                f"2b. LISTEN connection killed {figures.listener_kills}x (poll interval "
                f"{figures.poll_s:g} s): a job enqueued right after the kill started after "
                f"{_ms_range(figures.after_kill_ms)}; once the listener was back, after "
                f"{_ms_range(figures.reconnected_ms)}"
            )
            print(f"   {self.details[-1]}", flush=True)

        self.run(2, "terminate all pgjobs connections every 5 s", body)

    def on_own_cluster(
        self,
        number: int,
        name: str,
        body: Callable[[Cluster, str, Path], None],
        max_connections: int | None = None,
    ) -> None:
        """Run a scenario that restarts its server on a cluster of its own."""
        cluster = Cluster.start(max_connections=max_connections)
        try:
            self.run(
                number, name, lambda db_url, log_dir: body(cluster, db_url, log_dir), cluster.url
            )
        finally:
            cluster.stop()

    def restarts(self) -> None:
        def body(cluster: Cluster, db_url: str, log_dir: Path) -> None:
            self.add(
                scenarios.postgres_restarts(
                    cluster,
                    db_url,
                    log_dir,
                    jobs=self.sizes.restart_jobs,
                    restarts=self.sizes.restarts,
                    every=8.0,
                    timeout=1800,
                )
            )

        self.on_own_cluster(3, "PostgreSQL restarts", body)

    def redis(self) -> None:
        if not Redis.available():
            self.details.append("4. skipped: no redis-server on PATH")
            return
        server = Redis.start()

        def body(db_url: str, log_dir: Path) -> None:
            report, _ = scenarios.redis_restart(
                db_url, server, log_dir, jobs=self.sizes.redis_jobs, down_s=5.0
            )
            self.add(report)

        try:
            self.run(4, "Redis stopped mid-run", body)
        finally:
            server.close()

    def hangs(self) -> None:
        def body(db_url: str, log_dir: Path) -> None:
            report, figures = scenarios.hangs_and_poison(
                db_url, log_dir, innocents=self.sizes.innocents
            )
            self.add(report)
            poison = figures.jobs["poison"]
            self.details.append(
                f"5. poison job (JOBS_MAX_STALLED_COUNT=2): {figures.starts['poison']} runs, "
                f"{figures.crashes} worker processes killed, ended {poison.get('status')} "
                f"with stalled_count {poison.get('stalled_count')}; hung async/sync handlers "
                f"failed with {figures.failures['hang-async']} / "
                f"{figures.failures['hang-sync']}; the CPU loop was recorded as timed out "
                f"{figures.cpu_loop_timeout_ms:.0f} ms after it started, while its abandoned "
                f"thread kept the worker at {figures.cpu_loop_core_share:.0%} of a core; the "
                f"worker with an hour-long abandoned thread stopped in {figures.stop_s:g} s"
            )
            print(f"   {self.details[-1]}", flush=True)

        self.run(5, "hangs and a poison job", body)

    def sigstop(self) -> None:
        def body(db_url: str, log_dir: Path) -> None:
            report, figures = scenarios.sigstop(db_url, log_dir, jobs=8)
            self.add(report)
            self.details.append(
                f"6. SIGSTOP: {figures.stale_discarded} late outcomes of the frozen worker "
                f"rejected by the fence; results written by the rescuer only "
                f"({figures.results_by_pid})"
            )

        self.run(6, "SIGSTOP past the lease", body)

    def long_transaction(self) -> None:
        def body(db_url: str, log_dir: Path) -> None:
            report, f = scenarios.long_transaction(
                db_url,
                log_dir,
                baseline_s=30,
                hold_s=self.sizes.hold_s,
                recovery_s=self.sizes.recovery_s,
                backlog=3000,
            )
            self.add(report)
            self.details.append(
                f"7. idle REPEATABLE READ transaction held {f.hold_s:g} s while 4 workers "
                f"ran at full speed: {f.baseline_per_s:g} jobs/s before, "
                f"{f.hold_first_per_s:g}/s in the hold's first 10 s, {f.hold_last_per_s:g}/s "
                f"in its last 10 s, {f.after_per_s:g}/s in the 10 s after; the claim's index "
                f"scan took {f.probe_ms_before:g} ms before, {f.probe_ms_end:g} ms at the end "
                f"of the hold, {f.probe_ms_after:g} ms after; dead tuples in jobs "
                f"{f.dead_tuples_before:,} -> {f.dead_tuples_peak:,}, claim index "
                f"{f.claim_index_kb_before:,} kB -> {f.claim_index_kb_peak:,} kB; throughput "
                f"back to 90 % {_s(f.recovered_throughput_s)} after the release, dead tuples "
                f"removed by autovacuum {_s(f.recovered_dead_tuples_s)} after it; health "
                f"output: `{f.stats_flag}`, `{f.metrics_line}`"
            )
            print(f"   {self.details[-1]}", flush=True)
            print(
                "   timeline (s, completed/s, dead tuples, probe ms): " + str(f.timeline),
                flush=True,
            )

        self.run(7, "idle REPEATABLE READ transaction", body)

    def poison(self) -> None:
        def body(db_url: str, log_dir: Path) -> None:
            report, f = scenarios.poison_among_kills(
                db_url,
                log_dir,
                jobs=self.sizes.poison_jobs,
                poison=self.sizes.poison_count,
                max_stalled=2,
                min_duration=self.sizes.poison_s,
                timeout=3600,
            )
            self.add(report)
            endings = sorted({(p["status"], p["stalled_count"]) for p in f.poison})
            self.details.append(
                f"8. {len(f.poison)} poison jobs among {report.jobs - len(f.poison):,} "
                f"ordinary ones, 3 workers, kill -9 every 1.5 s (JOBS_MAX_STALLED_COUNT=2): "
                f"{f.crashes} worker processes killed by the poison jobs; poison jobs ended "
                f"{endings} (status, stalls); ordinary jobs: {f.innocent_failed} not "
                f"completed, {f.innocent_charged} charged a stall, {f.innocent_interrupted} "
                f"taken back uncharged and run alone"
            )
            print(f"   {self.details[-1]}", flush=True)

        self.run(8, "poison jobs among kill -9", body)

    def phases(self) -> None:
        def body(cluster: Cluster, db_url: str, log_dir: Path) -> None:
            report, figures = phased_run(
                cluster,
                db_url,
                log_dir,
                window_s=self.sizes.phase_window_s,
                rate=self.sizes.phase_rate,
            )
            self.add(report)
            self.phase_figures = figures

        # The idle-connections phase opens 300 on top of the fleet's and the readers'.
        self.on_own_cluster(9, "phases", body, max_connections=600)

    def many_hosts(self, count: int) -> None:
        """Rounds of 1..`count` hosts (network namespaces) x 2 worker processes, each
        draining a fresh backlog of no-op jobs; then scenario 10, one host cut off."""
        admin = self.server()
        redis = Redis.start() if Redis.available() else None
        redis_url = redis.url if redis is not None else None
        data_dir = self.cluster.server.data_dir if self.cluster is not None else None
        try:
            with Hosts(count, hosts.ports(admin, redis_url)) as net:
                for k in range(1, count + 1):

                    def body(db_url: str, log_dir: Path, k: int = k) -> None:
                        figures = hosts.drain_round(
                            db_url,
                            redis_url,
                            net,
                            log_dir,
                            hosts=k,
                            jobs=self.sizes.hosts_jobs,
                            data_dir=data_dir,
                        )
                        self.rounds.append(figures)
                        print(f"   {figures}", flush=True)

                    self.run(100 + k, f"{k} hosts x 2 processes drain", body)

            def cut(db_url: str, log_dir: Path) -> None:
                report, figures = hosts.cut_off_host(
                    db_url,
                    redis_url,
                    log_dir,
                    hosts=count,
                    jobs=self.sizes.hosts_cut_jobs,
                    cut_s=self.sizes.hosts_cut_s,
                    timeout=1800,
                )
                if figures.problems():
                    report.notes.append(f"many hosts: {figures.problems()}")
                    report.missing_records += 1
                self.cut_figures = figures
                self.add(report)
                self.details.append(f"10. {figures.text()}")

            self.run(10, f"{count} hosts, one cut off", cut)
        finally:
            if redis is not None:
                redis.close()

    def hosts_table(self) -> list[str]:
        base = self.rounds[0].jobs_per_s if self.rounds else 0.0
        lines = markdown_table(
            [
                ("hosts x processes", "-"),
                ("jobs", ":"),
                ("jobs/s", ":"),
                ("vs 1 host", ":"),
                ("primary CPU (cores)", ":"),
                ("workers CPU", ":"),
                ("forwarders CPU", ":"),
                ("machine busy", ":"),
                ("connections", ":"),
                ("WAL MB/s", ":"),
                ("WAL bytes/job", ":"),
                ("load avg", ":"),
                ("lost / duplicated", ":"),
            ],
            [
                [
                    f"{r.hosts} x {r.processes}",
                    f"{r.jobs:,}",
                    f"{r.jobs_per_s:,.0f}",
                    f"{r.jobs_per_s / base:.2f}" if base else "-",
                    f"{r.pg_cores:.2f}",
                    f"{r.worker_cores:.2f}",
                    f"{r.forwarder_cores:.2f}",
                    f"{r.machine_busy:.0%}",
                    str(r.connections),
                    f"{r.wal_mb_per_s:.1f}",
                    f"{r.wal_bytes_per_job:,.0f}",
                    f"{r.load_average:.1f}",
                    f"{r.lost} / {r.duplicated}",
                ]
                for r in self.rounds
            ],
        )
        if self.rounds:
            last = self.rounds[-1]
            lines += [
                "",
                f"At {last.hosts} hosts the machine's {os.cpu_count()} cores were "
                f"{last.machine_busy:.0%} busy: the primary's processes took "
                f"{last.pg_cores:.2f} cores, the workers {last.worker_cores:.2f}, the "
                f"forwarders {last.forwarder_cores:.2f}.",
            ]
        return lines

    def write_json(self, started: dt.datetime, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"hosts-{started:%Y%m%d-%H%M%S}.json"
        record = {
            "started": started.isoformat(),
            "machine": machine(),
            "pgjobs": __version__,
            "commit": git_commit(),
            "rounds": [dataclasses.asdict(r) for r in self.rounds],
            "cut_off": dataclasses.asdict(self.cut_figures) if self.cut_figures else None,
            "reports": [
                {**dataclasses.asdict(r), "violations": r.violations()} for r in self.reports
            ],
        }
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        return path

    # ---------------------------------------------------------------- output

    def table(self, started: dt.datetime, elapsed: float) -> str:
        lines = [
            f"Soak run of {started:%Y-%m-%d %H:%M} UTC, {elapsed / 60:.0f} min in all — "
            f"{machine()}; pgjobs {__version__} ({git_commit()})",
            "",
            *markdown_table(
                [
                    ("scenario", "-"),
                    ("jobs", ":"),
                    ("faults injected", "-"),
                    ("lost", ":"),
                    ("duplicate-completed", ":"),
                    ("re-executions (recorded reasons)", "-"),
                    ("unexplained", ":"),
                    ("pickup p50 / p99", "-"),
                    ("end-to-end p50 / p99", "-"),
                    ("back after a restart", "-"),
                    ("duration", ":"),
                ],
                [
                    [
                        r.scenario,
                        f"{r.jobs:,}",
                        r.faults_text(),
                        str(r.lost),
                        str(r.duplicate_completed),
                        f"{r.reexecutions:,} ({r.reasons_text()})",
                        str(r.unexplained),
                        f"{_ms(r.pickup_p50_ms)} / {_ms(r.pickup_p99_ms)}",
                        f"{_ms(r.e2e_p50_ms)} / {_ms(r.e2e_p99_ms)}",
                        r.recovery_text(),
                        f"{r.duration_s:,.0f} s",
                    ]
                    for r in self.reports
                ],
            ),
        ]
        if self.phase_figures:
            lines += ["", *self.phase_table()]
        if self.rounds:
            lines += ["", *self.hosts_table()]
        lines.append("")
        lines.extend(f"- {d}" for d in self.details)
        broken = [f"{r.scenario}: {r.violations()}" for r in self.reports if r.violations()]
        lines.append("")
        lines.append(
            "Invariants: all held."
            if not broken
            else "Invariants BROKEN:\n" + "\n".join(f"- {b}" for b in broken)
        )
        return "\n".join(lines)

    def phase_table(self) -> list[str]:
        """Scenario 9, one row per phase: each window's completed jobs per second and p99
        pickup (run_at -> handler start), then the phase's jobs after its recovery."""
        return markdown_table(
            [
                ("phase", "-"),
                ("fault (during)", "-"),
                ("before", "-"),
                ("during", "-"),
                ("after", "-"),
                ("jobs", ":"),
                ("left active", ":"),
                ("lost", ":"),
                ("duplicated", ":"),
                ("settled", ":"),
            ],
            [
                [
                    f.name,
                    f.fault,
                    f.before.text(),
                    f.during.text(),
                    f.after.text(),
                    f"{f.report.jobs:,}",
                    str(f.left_active),
                    str(f.report.lost),
                    str(f.report.duplicate_completed),
                    f"{f.settle_s:g} s",
                ]
                for f in self.phase_figures
            ],
        )


def markdown_table(columns: list[tuple[str, str]], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table; each column is (title, "-" left or ":" right)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("---:" if align == ":" else "---" for _, align in columns) + "|"
    return [line([title for title, _ in columns]), rule, *(line(row) for row in rows)]


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f} s" if value >= 10_000 else f"{value:,.0f} ms"


def _s(value: float | None) -> str:
    return "not within the window" if value is None else f"{value:g} s"


def _ms_range(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.0f}-{max(values):.0f} ms"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        memory = "? GB RAM"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, "
        f"PostgreSQL {postgres_version()} (fsync on), load average {load:.1f} at the end"
    )


def postgres_version() -> str:
    bin_dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not bin_dirs:
        return "?"
    out = subprocess.run(
        [str(bin_dirs[-1]), "--version"], capture_output=True, text=True, check=False
    )
    found = re.search(r"\d+(\.\d+)+", out.stdout)
    return found.group(0) if found else "?"


def git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI sizes (a smoke run)")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8,9", help="scenario numbers, e.g. 1,3")
    parser.add_argument("--jobs", type=int, help="scenario 1's job count (default 100,000)")
    parser.add_argument("--minutes", type=float, help="scenario 2's duration (default 10)")
    parser.add_argument("--restarts", type=int, help="scenario 3's restarts (default 5)")
    parser.add_argument("--hold", type=float, help="scenario 7's hold in s (default 180)")
    parser.add_argument("--window", type=float, help="scenario 9's window in s (default 30)")
    parser.add_argument("--rate", type=float, help="scenario 9's jobs/s (default 150)")
    parser.add_argument(
        "--hosts",
        type=int,
        help="many hosts instead of the scenarios: 1..N network namespaces x 2 worker "
        "processes draining no-op jobs (--jobs each, default 100,000), then one host cut off",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("bench-results"),
        help="where --hosts writes its JSON record (default bench-results/)",
    )
    parser.add_argument("--database-url", help="an existing server's admin URL")
    parser.add_argument("--keep", action="store_true", help="keep the scenario databases")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    # The API producers' pools log every failed reconnect during a restart.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    sizes = QUICK if args.quick else FULL
    overrides = {
        "kill9_jobs": args.jobs,
        "terminate_s": args.minutes * 60 if args.minutes else None,
        "restarts": args.restarts,
        "hold_s": args.hold,
        "phase_window_s": args.window,
        "phase_rate": args.rate,
    }
    if args.hosts is not None:
        if not 1 <= args.hosts <= 63:
            parser.error("--hosts takes a number of hosts from 1 to 63")
        reason = unavailable()
        if reason is not None:
            parser.error(f"--hosts needs network namespaces: {reason}")
        overrides["hosts_jobs"] = overrides.pop("kill9_jobs")
    sizes = Sizes(**{**vars(sizes), **{k: v for k, v in overrides.items() if v is not None}})
    if args.database_url is None and not Cluster.available():
        parser.error("no PostgreSQL binaries in /usr/lib/postgresql: give --database-url")
    try:
        wanted = {int(n) for n in args.only.split(",") if n.strip()}
    except ValueError:
        parser.error(f"--only takes scenario numbers like 1,3, not {args.only!r}")
    soak = Soak(sizes, args.database_url, args.keep)
    steps = {
        1: soak.kill9,
        2: soak.terminate,
        3: soak.restarts,
        4: soak.redis,
        5: soak.hangs,
        6: soak.sigstop,
        7: soak.long_transaction,
        8: soak.poison,
        9: soak.phases,
    }
    if wanted - steps.keys():
        parser.error(f"no scenario {sorted(wanted - steps.keys())}: they are 1 to {len(steps)}")
    started = dt.datetime.now(dt.UTC)
    began = time.monotonic()
    print(f"soak: sizes {sizes}; worker logs in {soak.logs}", flush=True)
    try:
        if args.hosts is not None:
            soak.many_hosts(args.hosts)
        else:
            for number in sorted(wanted):
                steps[number]()
    except (AssertionError, psycopg.Error) as exc:
        soak.details.append(f"ABORTED: {type(exc).__name__}: {exc}")
    finally:
        soak.close()
    text = soak.table(started, time.monotonic() - began)
    print()
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if args.hosts is not None:
        print(f"record: {soak.write_json(started, args.results)}")
    broken = any(r.violations() for r in soak.reports) or any(
        d.startswith("ABORTED") for d in soak.details
    )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
