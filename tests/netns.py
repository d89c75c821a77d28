"""Hosts on one machine: Linux network namespaces, each linked to the root namespace by
a veth pair, so worker processes run with a network of their own and reach PostgreSQL
and Redis only across that link.

    with Hosts(3, {"postgres": 5432, "redis": 6379}) as hosts:
        url = f"postgresql://postgres@{hosts[0].outer}:5432/db"
        subprocess.Popen(hosts[0].command(["pgjobs", "worker"]), env=...)
        hosts[0].cut()       # the link goes down: packets in flight are lost
        hosts[0].restore()

Each host gets a /30 of 10.213.B.0/24, B picked per run and reserved by a state file,
so parallel runs never share a subnet. The services listen on 127.0.0.1, which inside a
namespace is the namespace's own loopback: a TCP forwarder in the root namespace (socat,
else tests/tcp_forward.py) listens on each host's root-side address and relays to
127.0.0.1. Their connections therefore reach PostgreSQL from 127.0.0.1, which its
pg_hba trusts, and the shared server's listen_addresses need not change.

Cutting a host = `ip link set <root-side veth> down`: the namespace loses its carrier,
its TCP segments are dropped and retransmitted, nothing is reset; `restore` brings the
link up and the connections carry on. Everything is named with the `pjh` prefix and
recorded in a state file under /tmp/pgjobs-netns, so `cleanup_leftovers()` removes what
a run killed mid-way left behind: namespaces (their veths go with them) and forwarders.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pgjobs.dev.services import process_alive

PREFIX = "pjh"
STATE_DIR = Path(tempfile.gettempdir()) / "pgjobs-netns"
FORWARDER = Path(__file__).with_name("tcp_forward.py")


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cleanup_leftovers() -> list[str]:
    """Remove the namespaces and forwarders of runs whose process is gone; returns what
    was removed. A forwarder is killed only if its command line still names the run's
    subnet (its pid may have been reused since)."""
    removed: list[str] = []
    if not STATE_DIR.is_dir():
        return removed
    for path in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if process_alive(int(state["owner"])):
            continue
        for pid in state.get("forwarders", []):
            if state["subnet"] in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                removed.append(f"forwarder {pid}")
        for name in state.get("namespaces", []):
            if _ip("netns", "del", name, check=False).returncode == 0:
                removed.append(f"netns {name}")
        path.unlink(missing_ok=True)
    return removed


@dataclass
class Host:
    """One namespace: `outer` is the root-side address its processes connect to."""

    index: int
    label: str
    netns: str
    veth: str  # the root-side end; the other end lives in the namespace
    outer: str
    inner: str
    forwarders: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cut_count: int = 0

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec` execs it: same pid)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def cut(self) -> None:
        _ip("link", "set", self.veth, "down")
        self.cut_count += 1

    def restore(self) -> None:
        _ip("link", "set", self.veth, "up")

    def is_cut(self) -> bool:
        return "state DOWN" in _ip("link", "show", self.veth).stdout


class Hosts:
    """`count` namespaces with forwarders for `ports` (a name -> port on 127.0.0.1 in the
    root namespace; each host's forwarder listens on the same port at its `outer`)."""

    def __init__(self, count: int, ports: Mapping[str, int]) -> None:
        if not 1 <= count <= 63:
            raise ValueError("between 1 and 63 hosts")
        self.count = count
        self.ports = dict(ports)
        self.hosts: list[Host] = []
        self.subnet = ""
        self._state: Path | None = None
        self._forwarder_pids: list[int] = []

    def __enter__(self) -> Hosts:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    # ------------------------------------------------------------ set-up

    def start(self) -> None:
        cleanup_leftovers()
        third = self._reserve_subnet()
        tag = f"{third:02x}{os.getpid() % 256:02x}"
        for index in range(self.count):
            host = Host(
                index=index,
                label=f"host-{index}",
                netns=f"{PREFIX}-{os.getpid()}-{tag}-{index}",
                veth=f"{PREFIX}{tag}{index}r",
                outer=f"10.213.{third}.{4 * index + 1}",
                inner=f"10.213.{third}.{4 * index + 2}",
            )
            self.hosts.append(host)
            self._save()
            self._link(host)
            for port in self.ports.values():
                host.forwarders.append(self._forward(host.outer, port))
                self._forwarder_pids.append(host.forwarders[-1].pid)
                self._save()
        for host in self.hosts:
            for port in self.ports.values():
                self._wait_listening(host.outer, port)

    def _reserve_subnet(self) -> int:
        """A third octet no other run holds (its state file is the reservation) and no
        interface of this machine uses."""
        STATE_DIR.mkdir(exist_ok=True)
        used = _ip("-o", "-4", "addr", "show").stdout
        for third in random.sample(range(256), 256):
            subnet = f"10.213.{third}."
            if subnet in used:
                continue
            path = STATE_DIR / f"{third}.json"
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            os.close(fd)
            self._state = path
            self.subnet = subnet
            return third
        raise RuntimeError("no free 10.213.X.0/24 subnet for test hosts")

    def _save(self) -> None:
        if self._state is None:
            return
        state = {
            "owner": os.getpid(),
            "subnet": self.subnet,
            "namespaces": [h.netns for h in self.hosts],
            "forwarders": self._forwarder_pids,
        }
        self._state.write_text(json.dumps(state))

    @staticmethod
    def _link(host: Host) -> None:
        inside = f"{host.veth[:-1]}i"
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", host.netns)
        _ip("addr", "add", f"{host.outer}/30", "dev", host.veth)
        _ip("link", "set", host.veth, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.inner}/30", "dev", inside)
        _ip("-n", host.netns, "link", "set", inside, "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")

    @staticmethod
    def _forward(address: str, port: int) -> subprocess.Popen[bytes]:
        """A forwarder from address:port to 127.0.0.1:port, in a process group of its own
        (socat forks a child per connection: the group is stopped as one)."""
        if shutil.which("socat"):
            argv = [
                "socat",
                f"TCP-LISTEN:{port},bind={address},reuseaddr,fork,nodelay,backlog=512",
                f"TCP:127.0.0.1:{port},nodelay",
            ]
        else:
            argv = [sys.executable, str(FORWARDER), address, str(port), "127.0.0.1", str(port)]
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    @staticmethod
    def _wait_listening(address: str, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((address, port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no forwarder listening on {address}:{port}") from None
                time.sleep(0.05)

    # ------------------------------------------------------------ tear-down

    def close(self) -> None:
        for pid in self._forwarder_pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for host in self.hosts:
            for proc in host.forwarders:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        for host in self.hosts:
            # Deleting the namespace destroys its end of the veth, and with it the pair.
            _ip("netns", "del", host.netns, check=False)
            _ip("link", "del", host.veth, check=False)
        if self._state is not None:
            self._state.unlink(missing_ok=True)
            self._state = None
