"""Restoring a backup file: decrypt and decompress as a stream into `pg_restore` (custom
archives) or `psql` (plain SQL), in one transaction, so a failure, a wrong key or a
damaged file leaves the target database as it was."""

from __future__ import annotations

import collections
import contextlib
import itertools
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pgjobs.backups.fileformat import CUSTOM_MAGIC, BackupFileError, Layers, read_plain
from pgjobs.backups.pgtools import PgTool, find_tool, server_major_sync, target
from pgjobs.config import Settings
from pgjobs.errors import PgJobsError


class RestoreFailed(PgJobsError):
    """pg_restore or psql reported an error; the target database is unchanged."""

    code = "restore_failed"


@dataclass(frozen=True, slots=True)
class RestoreReport:
    path: Path
    database: str
    dump_format: str
    layers: Layers
    tool: PgTool
    dump_bytes: int
    seconds: float

    def describe(self) -> str:
        forms = [self.dump_format]
        if self.layers.compressed:
            forms.append("gzip")
        if self.layers.encrypted:
            forms.append("encrypted")
        return (
            f"restored {self.path} ({', '.join(forms)}, {self.dump_bytes} bytes of dump) into "
            f"database {self.database} with {self.tool.name} {self.tool.version} "
            f"in {self.seconds:.1f} s"
        )


def restore(
    path: Path, database_url: str, settings: Settings, *, no_owner: bool = False
) -> RestoreReport:
    started = time.monotonic()
    try:
        f = path.open("rb")
    except OSError as exc:
        raise PgJobsError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        # The key and the header are checked before the target is even contacted.
        chunks, layers = read_plain(f, settings.backup_encryption_key, str(path))
        first = next(chunks, b"")
        if not first:
            raise BackupFileError(f"{path}: the backup is empty")
        dump_format = "custom" if first.startswith(CUSTOM_MAGIC) else "plain"
        major, _ = server_major_sync(database_url)
        tool = find_tool("pg_restore" if dump_format == "custom" else "psql", major, settings)
        where = target(database_url, "restore")
        if dump_format == "custom":
            command = [str(tool.path), *where.args(), "--exit-on-error", "--single-transaction"]
            if no_owner:
                command.append("--no-owner")
        else:
            command = [
                str(tool.path),
                *where.args(),
                "--no-psqlrc",
                "--quiet",
                "--single-transaction",
                "--set=ON_ERROR_STOP=1",
                "--file=-",
            ]
        total = _feed(command, where.env, itertools.chain([first], chunks), tool)
    return RestoreReport(
        path, where.database, dump_format, layers, tool, total, time.monotonic() - started
    )


def _feed(command: list[str], env: dict[str, str], data: Iterator[bytes], tool: PgTool) -> int:
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdin is not None and proc.stderr is not None
    errors: collections.deque[str] = collections.deque(maxlen=40)
    reader = threading.Thread(target=_collect, args=(proc.stderr, errors), daemon=True)
    reader.start()
    total = 0
    try:
        for piece in data:
            try:
                proc.stdin.write(piece)
            except BrokenPipeError:
                break  # the tool stopped early; its exit status and stderr say why
            total += len(piece)
        else:
            proc.stdin.close()
    except BaseException as exc:
        # Killed before its input ended, the tool never commits its transaction.
        proc.kill()
        proc.wait()
        reader.join(5)
        if isinstance(exc, BackupFileError):
            raise BackupFileError(f"{exc}; nothing was restored") from None
        raise
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    code = proc.wait()
    reader.join(5)
    if code != 0:
        raise RestoreFailed(
            f"{tool.name} failed with exit status {code}, nothing was restored: {_summary(errors)}"
        )
    return total


def _collect(stream: IO[bytes], lines: collections.deque[str]) -> None:
    for raw in stream:
        text = raw.decode("utf-8", "replace").strip()
        if text:
            lines.append(text)


def _summary(lines: collections.deque[str]) -> str:
    errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()]
    picked = (errors or list(lines))[:3]
    return " | ".join(picked) if picked else "no error output"
