"""Local services for development, demos and tests: find or start PostgreSQL and Redis.

`python -m pgjobs.devservices env` prints shell `export` lines for DATABASE_URL and,
when a Redis is available, PGJOBS_DEV_REDIS_URL.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_debian_cluster() -> bool:
    """Start the machine's own PostgreSQL cluster(s) if pg_ctlcluster is installed."""
    if not shutil.which("pg_ctlcluster"):
        return False
    for version_dir in sorted(glob.glob("/etc/postgresql/*/main")):
        version = version_dir.split("/")[3]
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            capture_output=True,
        )
    return port_open("127.0.0.1", 5432, timeout=2)


def ensure_postgres() -> str:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    if port_open("127.0.0.1", 5432) or start_debian_cluster():
        return LOCAL_URL
    raise SystemExit("error: no PostgreSQL: set DATABASE_URL or install PostgreSQL")


def ensure_redis() -> str | None:
    if port_open("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379/0"
    server = shutil.which("redis-server")
    if server:
        subprocess.run(
            [
                server,
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            check=False,
            capture_output=True,
        )
        if port_open("127.0.0.1", 6379, timeout=2):
            return "redis://127.0.0.1:6379/0"
    return None


def main(argv: list[str]) -> int:
    if argv[:1] != ["env"]:
        print("usage: python -m pgjobs.devservices env", file=sys.stderr)
        return 2
    print(f"export DATABASE_URL='{ensure_postgres()}'")
    redis_url = ensure_redis()
    if redis_url:
        print(f"export PGJOBS_DEV_REDIS_URL='{redis_url}'")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
