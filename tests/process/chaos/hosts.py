"""Many hosts: worker fleets in network namespaces (tests/netns.py) that share one
PostgreSQL primary and one Redis, reached only across each host's veth link.

- `HostFleet`: one `pgjobs worker --processes P` per host, run with `ip netns exec`,
  DATABASE_URL and JOBS_REDIS_URL pointing at the host's root-side address, and
  CHAOS_HOST naming the host in every ledger row.
- `cut_off_host`: a queue drained by every host while one host's link goes down for
  longer than the lease and comes back; a per-second cron schedule runs all along.
- `drain_round`: the throughput of N hosts draining a backlog of no-op jobs, with what
  the primary spent on it (CPU of its processes, connections, WAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pgjobs.app import App
from pgjobs.engine.maintenance.tasks import LEADER_IDLE_TIMEOUT_MS
from tests.netns import Host, Hosts
from tests.process.chaos.harness import (
    APPS,
    BASE_ENV,
    LEASE_MS,
    SWEEP_MS,
    TERMINAL,
    Ledger,
    Report,
    connect,
)
from tests.process.chaos.scenarios import CHAOS_ATTEMPTS, Run

STALE_LINE = re.compile(r"stale run discarded id=([0-9a-f-]{36}) attempt=(\d+)")


def ports(db_url: str, redis_url: str | None) -> dict[str, int]:
    """The ports the hosts' forwarders relay (PostgreSQL's, and Redis's if any)."""
    found = {"postgres": urlsplit(db_url).port or 5432}
    if redis_url:
        found["redis"] = urlsplit(redis_url).port or 6379
    return found


def via(url: str, host: Host) -> str:
    """`url` with its host replaced by `host`'s root-side address (same port)."""
    parts = urlsplit(url)
    netloc = parts.netloc.replace(parts.hostname or "", host.outer, 1)
    return urlunsplit(parts._replace(netloc=netloc))


# ---------------------------------------------------------------- the fleet


class HostFleet:
    """`pgjobs worker --processes P --app chaos_app:app` on each host (one supervisor
    process per host, its children restarted by it). Same interface as `Fleet` for
    `Run.finish`: stop() -> exit codes, log_tail(), kill_all()."""

    def __init__(
        self,
        hosts: Hosts,
        db_url: str,
        redis_url: str | None,
        *,
        processes: int,
        concurrency: int,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.hosts = hosts
        self.db_url = db_url
        self.redis_url = redis_url
        self.processes = processes
        self.concurrency = concurrency
        self.log_dir = log_dir
        self.env = {**BASE_ENV, **(env or {})}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.spawned = 0
        self.exited_early = 0

    def environ(self, host: Host) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("JOBS_") and k not in ("DATABASE_URL", "LOG_LEVEL")
        }
        path = os.pathsep.join(p for p in (str(APPS), base.get("PYTHONPATH", "")) if p)
        env = {
            **base,
            "PYTHONPATH": path,
            "DATABASE_URL": via(self.db_url, host),
            "CHAOS_HOST": host.label,
            "CHAOS_HANDLER_POOL": str(self.concurrency + 2),
            **self.env,
        }
        if self.redis_url:
            env["JOBS_REDIS_URL"] = via(self.redis_url, host)
        return env

    def start(self, count: int | None = None) -> HostFleet:
        for host in list(self.hosts)[: count if count is not None else len(self.hosts)]:
            self.spawn(host.index)
        return self

    def spawn(self, slot: int) -> subprocess.Popen[bytes]:
        host = self.hosts[slot]
        command = host.command(
            [
                sys.executable,
                "-m",
                "pgjobs",
                "worker",
                "--app",
                "chaos_app:app",
                "--processes",
                str(self.processes),
                "--concurrency",
                str(self.concurrency),
                "default",
            ]
        )
        with open(self.log_path(slot), "ab") as log:
            # A session of its own: the supervisor and its children are killed as a group.
            proc = subprocess.Popen(
                command,
                env=self.environ(host),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.log_dir,
                start_new_session=True,
            )
        self.procs[slot] = proc
        self.spawned += 1
        return proc

    def log_path(self, slot: int) -> Path:
        return self.log_dir / f"{self.hosts[slot].label}.log"

    def alive(self) -> list[int]:
        return [slot for slot, p in self.procs.items() if p.poll() is None]

    def pids(self, slot: int) -> list[int]:
        """The worker processes (the supervisor's children) of a host."""
        pid = self.procs[slot].pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return []
        return [int(c) for c in children]

    def tree(self) -> list[int]:
        """Every supervisor and worker process of the fleet."""
        return [pid for slot in self.procs for pid in (self.procs[slot].pid, *self.pids(slot))]

    def stop(self, timeout: float = 30) -> dict[int, int]:
        self.exited_early += len(self.procs) - len(self.alive())
        for slot in self.alive():
            # The supervisor forwards SIGTERM to its workers, waits for them, exits 0.
            self.procs[slot].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[int, int] = {}
        for slot, proc in self.procs.items():
            try:
                codes[slot] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill_group(proc)
                codes[slot] = proc.wait(10)
        return codes

    def kill_all(self) -> None:
        for proc in self.procs.values():
            self._kill_group(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for slot in sorted(self.procs):
            path = self.log_path(slot)
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def registered(ledger: Ledger) -> int:
    return int(ledger.query("SELECT count(*) AS n FROM job_workers")[0]["n"])


# ---------------------------------------------------------------- a host cut off


@dataclass
class CutFigures:
    hosts: int
    processes: int
    victim: str
    cut_s: float  # how long the link was down
    victim_in_flight: int  # jobs held by the victim's workers when its link went down
    rescued_after_s: float  # cut -> none of those jobs held by the victim any more
    stale_runs: int  # runs on the victim that lost their job to a rescue
    fenced_in_tx: int  # ... whose complete_in was rejected (chaos_fenced rows)
    fenced_logged: int  # ... whose returned outcome the completer discarded (log lines)
    unfenced: list[str]  # stale runs with neither: must be empty
    results_by_host: dict[str, int]
    effects_by_host: dict[str, int]
    victim_results_after_restore: int  # jobs the victim completed once it was back
    cron_fires: int
    cron_span_s: float  # last fire - first fire
    cron_gaps: int  # slots between the first and the last fire with no fire
    cron_bad_jobs: int  # fires without exactly one completed job and one result
    cron_unfired_jobs: int  # schedule jobs with no fire row
    cron_fires_in_cut: int
    cron_max_late_ms: float  # fired_at - fire_time, worst
    cron_hosts: dict[str, int] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = []
        if self.stale_runs == 0:
            found.append("no run on the cut-off host lost its job: nothing was fenced")
        if self.unfenced:
            found.append(f"stale runs not fenced: {self.unfenced[:5]}")
        if self.cron_gaps or self.cron_bad_jobs or self.cron_unfired_jobs:
            found.append(
                f"cron: {self.cron_gaps} missing slots, {self.cron_bad_jobs} fires without "
                f"exactly one completed job, {self.cron_unfired_jobs} jobs without a fire"
            )
        if self.cron_fires < 2:
            found.append(f"cron fired {self.cron_fires} times")
        # The lease, a sweep, and the cut-off host's own rescue round if it led the
        # rescue when it was cut off (its transaction ends after the leader idle timeout).
        handover_s = (LEASE_MS + SWEEP_MS + LEADER_IDLE_TIMEOUT_MS) / 1000 + 3
        if self.rescued_after_s > handover_s:
            found.append(
                f"the cut-off host's jobs were rescued {self.rescued_after_s} s after the cut "
                f"(at most {handover_s:g} s expected)"
            )
        return found

    def text(self) -> str:
        return (
            f"{self.hosts} hosts x {self.processes} processes; {self.victim} cut off "
            f"{self.cut_s:.1f} s with {self.victim_in_flight} jobs in flight, all rescued "
            f"{self.rescued_after_s:.1f} s after the cut (lease {LEASE_MS / 1000:g} s, sweep "
            f"{SWEEP_MS / 1000:g} s); {self.stale_runs} runs on it lost their job and were "
            f"fenced out once it was back ({self.fenced_in_tx} complete_in rejected, "
            f"{self.fenced_logged} returned outcomes discarded); results by host "
            f"{self.results_by_host}; cron `* * * * * *`: {self.cron_fires} fires over "
            f"{self.cron_span_s:.0f} s, {self.cron_gaps} missing, {self.cron_bad_jobs} "
            f"without exactly one completed job, {self.cron_fires_in_cut} during the cut, "
            f"latest {self.cron_max_late_ms:.0f} ms after its slot, run by {self.cron_hosts}"
        )


def cut_off_host(
    db_url: str,
    redis_url: str | None,
    log_dir: Path,
    *,
    hosts: int = 3,
    processes: int = 2,
    concurrency: int = 8,
    jobs: int = 3000,
    job_ms: tuple[int, int] = (5, 30),
    cut_at: float = 0.3,
    cut_s: float = 4.0,
    timeout: float = 300,
) -> tuple[Report, CutFigures]:
    """`hosts` hosts drain `jobs` chaos jobs (half completed in the handler's
    transaction, half returned) while a schedule fires every second. Once `cut_at` of
    the jobs are done, the last host's link goes down for at least `cut_s` seconds and
    until every job it held was rescued by the others; then it comes back. Its late
    outcomes must all be rejected by the (id, attempt) fence."""
    run = Run(f"10. {hosts} hosts x {processes}, one cut off", db_url, log_dir, max_run_s=0.1)
    ledger = run.ledger
    low, high = job_ms

    def payload() -> tuple[dict[str, Any], str]:
        body, mode = ledger.chaos_payload(min_ms=low, max_ms=high, return_share=0.5)
        return body, mode

    for start in range(0, jobs, 2000):
        ledger.enqueue(min(2000, jobs - start), payload=payload, attempts=CHAOS_ATTEMPTS)
    app = App(database_url=db_url)
    schedule = f"tick-{os.getpid()}"
    with Hosts(hosts, ports(db_url, redis_url)) as net:
        fleet = HostFleet(
            net,
            db_url,
            redis_url,
            processes=processes,
            concurrency=concurrency,
            log_dir=log_dir,
        )
        victim = net[hosts - 1]
        try:
            fleet.start()
            wait_for(lambda: registered(ledger) >= hosts * processes, 60, "every worker up")
            # Created once every host is up, so each slot has three hosts to fire it.
            app.schedule_sync(schedule, "tick", "* * * * * *")

            def done() -> int:
                return ledger.counts().get("completed", 0)

            wait_for(lambda: done() >= cut_at * jobs, timeout, f"{cut_at:.0%} of the jobs done")
            victim_workers = fleet.pids(victim.index)
            held = _held_by(ledger, victim_workers)
            cut_began = time.monotonic()
            cut_at_db = _db_now(ledger)
            # While the host is away, a job whose row its open transaction holds locked
            # (a complete_in that was about to commit) cannot be rescued: the server
            # sees an idle session, not a closed one, until the host is back or the
            # session's idle timeout ends it. The rescue of what it held is timed below
            # instead; the monitor watches again once the host is back.
            run.monitor.quiet(timeout)
            victim.cut()
            run.faults[f"{victim.label} cut off"] += 1
            wait_for(
                lambda: not (_held_by(ledger, victim_workers) & held),
                timeout,
                "the cut-off host's jobs rescued",
            )
            rescued_after = time.monotonic() - cut_began
            time.sleep(max(0.0, cut_s - (time.monotonic() - cut_began)))
            victim.restore()
            run.monitor.resume_after(run.monitor.silent_limit)
            cut_for = time.monotonic() - cut_began
            restored_at_db = _db_now(ledger)
            wait_for(
                lambda: sum(ledger.counts().get(s, 0) for s in TERMINAL) >= ledger.enqueued,
                timeout,
                "every job terminal",
                interval=0.2,
            )
            # Off before the workers stop, so no fire is left without a worker to run it.
            _disable(db_url, schedule)
            report = run.finish(fleet, timeout=timeout)
        finally:
            with contextlib.suppress(Exception):
                victim.restore()
            fleet.kill_all()
            app.close_sync()
    figures = _cut_figures(
        ledger,
        fleet,
        victim,
        hosts=hosts,
        processes=processes,
        cut_s=cut_for,
        held=len(held),
        rescued_after=rescued_after,
        cut=(cut_at_db, restored_at_db),
        schedule=schedule,
    )
    ledger.close()
    report.notes.append(figures.text())
    return report, figures


def _db_now(ledger: Ledger) -> dt.datetime:
    value: dt.datetime = ledger.query("SELECT clock_timestamp() AS now")[0]["now"]
    return value


def _held_by(ledger: Ledger, pids: list[int]) -> set[Any]:
    rows = ledger.query(
        "SELECT j.id FROM jobs j JOIN job_workers w ON w.id = j.worker_id "
        "WHERE j.status = 'active' AND w.pid = ANY(%s)",
        (pids,),
    )
    return {row["id"] for row in rows}


def _disable(db_url: str, name: str) -> None:
    async def off() -> None:
        app = App(database_url=db_url)
        try:
            await app.disable_schedule(name)
        finally:
            await app.close()

    asyncio.run(off())


def _cut_figures(
    ledger: Ledger,
    fleet: HostFleet,
    victim: Host,
    *,
    hosts: int,
    processes: int,
    cut_s: float,
    held: int,
    rescued_after: float,
    cut: tuple[dt.datetime, dt.datetime],
    schedule: str,
) -> CutFigures:
    # Runs on the victim whose (id, attempt) is not the one that completed the job.
    stale = ledger.query(
        "SELECT s.job_id, s.attempt, c.mode, "
        "  EXISTS (SELECT 1 FROM chaos_fenced f WHERE f.job_id = s.job_id "
        "          AND f.attempt = s.attempt AND f.host = s.host) AS fenced "
        "FROM chaos_starts s JOIN chaos_jobs c ON c.job_id = s.job_id "
        "JOIN job_results r ON r.job_id = s.job_id "
        "WHERE s.host = %s AND r.attempt IS DISTINCT FROM s.attempt",
        (victim.label,),
    )
    log = fleet.log_path(victim.index).read_text(errors="replace")
    discarded = {(m.group(1), int(m.group(2))) for m in STALE_LINE.finditer(log)}
    unfenced = [
        f"{row['job_id']}/{row['attempt']} ({row['mode']})"
        for row in stale
        if not row["fenced"] and (str(row["job_id"]), row["attempt"]) not in discarded
    ]
    results = ledger.query(
        "SELECT r.result->>'host' AS host, count(*) AS n FROM job_results r "
        "JOIN chaos_jobs c ON c.job_id = r.job_id GROUP BY 1"
    )
    effects = ledger.query("SELECT host, count(*) AS n FROM chaos_effects GROUP BY 1")
    after = ledger.query(
        "SELECT count(*) AS n FROM job_results r JOIN chaos_jobs c ON c.job_id = r.job_id "
        "WHERE r.result->>'host' = %s AND r.completed_at > %s",
        (victim.label, cut[1]),
    )[0]["n"]
    cron = ledger.query(
        "SELECT f.fire_time, f.fired_at, f.job_id, j.status, "
        "  (SELECT count(*) FROM job_results r WHERE r.job_id = f.job_id) AS results, "
        "  (SELECT r.result->>'host' FROM job_results r WHERE r.job_id = f.job_id LIMIT 1) "
        "     AS host "
        "FROM job_schedule_fires f JOIN job_schedules s ON s.id = f.schedule_id "
        "LEFT JOIN jobs j ON j.id = f.job_id "
        "WHERE s.name = %s ORDER BY f.fire_time",
        (schedule,),
    )
    unfired = ledger.query(
        "SELECT count(*) AS n FROM jobs j JOIN job_schedules s ON s.id = j.schedule_id "
        "WHERE s.name = %s AND NOT EXISTS "
        "(SELECT 1 FROM job_schedule_fires f WHERE f.job_id = j.id)",
        (schedule,),
    )[0]["n"]
    times = [row["fire_time"] for row in cron]
    span = (times[-1] - times[0]).total_seconds() if times else 0.0
    cron_hosts: dict[str, int] = {}
    for row in cron:
        cron_hosts[str(row["host"])] = cron_hosts.get(str(row["host"]), 0) + 1
    return CutFigures(
        hosts=hosts,
        processes=processes,
        victim=victim.label,
        cut_s=round(cut_s, 1),
        victim_in_flight=held,
        rescued_after_s=round(rescued_after, 1),
        stale_runs=len(stale),
        fenced_in_tx=sum(1 for row in stale if row["fenced"]),
        fenced_logged=sum(1 for row in stale if (str(row["job_id"]), row["attempt"]) in discarded),
        unfenced=unfenced,
        results_by_host={r["host"]: int(r["n"]) for r in results},
        effects_by_host={r["host"]: int(r["n"]) for r in effects},
        victim_results_after_restore=int(after),
        cron_fires=len(cron),
        cron_span_s=span,
        cron_gaps=round(span) + 1 - len(cron) if cron else 0,
        cron_bad_jobs=sum(1 for row in cron if row["status"] != "completed" or row["results"] != 1),
        cron_unfired_jobs=int(unfired),
        cron_fires_in_cut=sum(1 for t in times if cut[0] <= t <= cut[1]),
        cron_max_late_ms=max(
            ((row["fired_at"] - row["fire_time"]).total_seconds() * 1000 for row in cron),
            default=0.0,
        ),
        cron_hosts=cron_hosts,
    )


# ---------------------------------------------------------------- throughput


@dataclass
class RoundFigures:
    hosts: int
    processes: int
    jobs: int
    jobs_per_s: float  # steady rate: the 10th to the 90th percentile of completions
    drain_s: float  # first claim -> last completion
    pg_cores: float  # CPU of the primary's processes, in cores (mean over the drain)
    worker_cores: float  # CPU of the worker processes
    forwarder_cores: float  # CPU of the TCP forwarders (the hosts' "network")
    machine_busy: float  # share of all cores busy
    connections: int  # most connections to the database seen
    wal_mb_per_s: float
    wal_bytes_per_job: float
    load_average: float  # 1-minute, at the end
    lost: int
    duplicated: int


class Sampler(threading.Thread):
    """Once a second: CPU of the primary's processes (the postmaster and its children),
    of the fleet and of the forwarders, the machine's busy share, the database's
    connections and its WAL position."""

    def __init__(
        self, db_url: str, postmaster: int | None, fleet: HostFleet, forwarders: list[int]
    ) -> None:
        super().__init__(daemon=True, name="hosts-sampler")
        self.db_url = db_url
        self.postmaster = postmaster
        self.fleet = fleet
        self.forwarders = forwarders
        self.samples: list[dict[str, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        with connect(self.db_url, "hosts:sampler") as conn:
            while not self._halt.wait(1.0):
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = "
                    "current_database()) AS connections, "
                    "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8 AS wal"
                ).fetchone()
                assert row is not None
                tree = _children()
                primary = [self.postmaster] if self.postmaster else []
                self.samples.append(
                    {
                        "t": time.monotonic(),
                        "pg": _cpu(_descendants(tree, primary)),
                        "workers": _cpu(_descendants(tree, self.fleet.tree())),
                        "forwarders": _cpu(_descendants(tree, self.forwarders)),
                        **_machine(),
                        "connections": float(row["connections"]),
                        "wal": float(row["wal"]),
                    }
                )

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)

    def mean_rate(self, key: str) -> float:
        """Mean per-second increase of a counter over the samples."""
        first, last = self.samples[0], self.samples[-1]
        elapsed = last["t"] - first["t"]
        return (last[key] - first[key]) / elapsed if elapsed > 0 else 0.0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(tree: dict[int, list[int]], roots: list[int]) -> list[int]:
    seen: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        seen.append(pid)
        stack.extend(tree.get(pid, []))
    return seen


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system, children reaped included) of these processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / ticks


def _machine() -> dict[str, float]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return {"busy": float(sum(fields) - idle), "all": float(sum(fields))}


def postmaster_pid(data_dir: Path | None) -> int | None:
    if data_dir is None:
        return None
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def drain_round(
    db_url: str,
    redis_url: str | None,
    net: Hosts,
    log_dir: Path,
    *,
    hosts: int,
    processes: int = 2,
    concurrency: int = 16,
    jobs: int = 100_000,
    data_dir: Path | None = None,
    timeout: float = 1800,
) -> RoundFigures:
    """Enqueue `jobs` no-op jobs, start `processes` workers on each of the first
    `hosts` hosts, and measure the drain."""
    ledger = Ledger(db_url)
    for start in range(0, jobs, 5000):
        ledger.enqueue(
            min(5000, jobs - start), type="noop", payload=lambda: ({}, "return"), attempts=5
        )
    fleet = HostFleet(
        net, db_url, redis_url, processes=processes, concurrency=concurrency, log_dir=log_dir
    )
    forwarders = [p.pid for host in list(net)[:hosts] for p in host.forwarders]
    sampler = Sampler(db_url, postmaster_pid(data_dir), fleet, forwarders)
    try:
        # Paused while the processes start, so every host drains from the first job on.
        ledger.query("SELECT name FROM pgjobs_pause('default')")
        fleet.start(hosts)
        wait_for(lambda: registered(ledger) >= hosts * processes, 120, "every worker up")
        sampler.start()
        ledger.query("SELECT name FROM pgjobs_resume('default')")
        if not ledger.wait_finished(timeout):
            raise AssertionError(f"not drained after {timeout:g} s: {ledger.counts()}")
        sampler.stop()
    finally:
        sampler.stop()
        fleet.stop()
        fleet.kill_all()
    row = ledger.query(
        "SELECT percentile_disc(0.1) WITHIN GROUP (ORDER BY completed_at) AS p10, "
        "percentile_disc(0.9) WITHIN GROUP (ORDER BY completed_at) AS p90, "
        "min(started_at) AS first, max(completed_at) AS last, count(*) AS n "
        "FROM jobs WHERE status = 'completed'"
    )[0]
    report = ledger.report(f"{hosts} hosts")
    ledger.close()
    steady = (row["p90"] - row["p10"]).total_seconds()
    samples = sampler.samples
    wal_rate = sampler.mean_rate("wal") if len(samples) > 1 else 0.0
    rate = 0.8 * int(row["n"]) / steady if steady > 0 else 0.0
    return RoundFigures(
        hosts=hosts,
        processes=processes,
        jobs=jobs,
        jobs_per_s=round(rate, 1),
        drain_s=round((row["last"] - row["first"]).total_seconds(), 1),
        pg_cores=round(sampler.mean_rate("pg"), 2) if len(samples) > 1 else 0.0,
        worker_cores=round(sampler.mean_rate("workers"), 2) if len(samples) > 1 else 0.0,
        forwarder_cores=round(sampler.mean_rate("forwarders"), 2) if len(samples) > 1 else 0.0,
        machine_busy=round(
            (samples[-1]["busy"] - samples[0]["busy"]) / (samples[-1]["all"] - samples[0]["all"]),
            3,
        )
        if len(samples) > 1
        else 0.0,
        connections=int(max((s["connections"] for s in samples), default=0)),
        wal_mb_per_s=round(wal_rate / 1e6, 2),
        wal_bytes_per_job=round(wal_rate / rate) if rate else 0.0,
        load_average=round(os.getloadavg()[0], 1),
        lost=report.lost,
        duplicated=report.duplicate_completed,
    )
