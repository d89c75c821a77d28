"""Restoring a backup file: decrypt and decompress as a stream into `pg_restore` (custom
archives) or `psql` (plain SQL), in one transaction, so a failure, a wrong key or a
damaged file leaves the target database as it was.

A backup file is not trusted because it sits in the backup directory. With
`JOBS_BACKUP_ENCRYPTION_KEY` set, only files that authenticate under it are restored
(unless the operator explicitly allows unencrypted ones). Plain SQL goes to psql, which
would also run meta-commands such as `\\! shell command` found anywhere in the file; so
the script is fed behind psql's own `\\restrict` with a random key, which makes psql
refuse every meta-command (its lexer, not ours, decides what one is). pg_dump's own
`\\restrict`/`\\unrestrict` pair is taken out; COPY data is unaffected.

The file may also be an object in S3 (`s3://bucket/key`): it is downloaded as a stream
straight into the same pipeline, never stored whole on disk or in memory.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pgjobs.backups import s3
from pgjobs.backups.fileformat import CUSTOM_MAGIC, BackupFileError, Layers, read_plain
from pgjobs.backups.pgtools import (
    PgTool,
    find_tool,
    psql_can_restrict,
    server_major_sync,
    target,
)
from pgjobs.config import Settings
from pgjobs.errors import PgJobsError


class RestoreFailed(PgJobsError):
    """pg_restore or psql reported an error; the target database is unchanged."""

    code = "restore_failed"


class RestoreRefused(PgJobsError):
    """The file is not one pgjobs will restore; nothing was sent to the database."""

    code = "restore_refused"


# psql's refusals once \restrict is in effect.
_RESTRICTED = ("backslash commands are restricted", "\\unrestrict: wrong key")
# pg_dump's header line, e.g. `\restrict NgUqNH...` (PostgreSQL 13.22/.../17.6 and later).
_DUMP_RESTRICT = re.compile(rb"\\restrict ([A-Za-z0-9]+)\r?\n")
HEADER_BYTES = 4096


@dataclass(frozen=True, slots=True)
class RestoreReport:
    path: str
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


def open_backup(source: str, settings: Settings) -> Any:
    """`source` (a path or `s3://bucket/key`) opened for reading as a stream."""
    if s3.is_s3_url(source):
        try:
            location = s3.parse_url(source, want_object=True)
        except ValueError as exc:
            raise PgJobsError(str(exc)) from None
        return s3.ObjectReader(s3.client(settings), location)
    if "://" in source:
        raise PgJobsError(f"{source[:80]!r}: only local files and s3://bucket/key can be restored")
    try:
        return Path(source).open("rb")
    except OSError as exc:
        raise PgJobsError(f"cannot read {source}: {exc.strerror or exc}") from None


def restore(
    source: str | Path,
    database_url: str,
    settings: Settings,
    *,
    no_owner: bool = False,
    allow_unencrypted: bool = False,
) -> RestoreReport:
    started = time.monotonic()
    path = str(source)
    with open_backup(path, settings) as f:
        # The key and the header are checked before the target is even contacted.
        chunks, layers = read_plain(f, settings.backup_encryption_key, path)
        keyed = settings.backup_encryption_key is not None
        if keyed and not layers.encrypted and not allow_unencrypted:
            raise RestoreRefused(
                f"{path} is not encrypted, so JOBS_BACKUP_ENCRYPTION_KEY cannot show it "
                "is one of your backups; refusing to restore it (pass "
                "--allow-unencrypted to restore it anyway)"
            )
        first = next(chunks, b"")
        if not first:
            raise BackupFileError(f"{path}: the backup is empty")
        dump_format = "custom" if first.startswith(CUSTOM_MAGIC) else "plain"
        major, _ = server_major_sync(database_url)
        tool = find_tool("pg_restore" if dump_format == "custom" else "psql", major, settings)
        where = target(database_url, "restore")
        data: Iterator[bytes] = itertools.chain([first], chunks)
        if dump_format == "custom":
            command = [str(tool.path), *where.args(), "--exit-on-error", "--single-transaction"]
            if no_owner:
                command.append("--no-owner")
        else:
            if not psql_can_restrict(tool.path):
                raise RestoreRefused(
                    f"psql {tool.version} ({tool.path}) cannot refuse meta-commands such as "
                    "\\! in a plain SQL backup (\\restrict needs 13.22, 14.19, 15.14, 16.10, "
                    "17.6 or later): upgrade the PostgreSQL client, or restore a custom-format "
                    "backup"
                )
            command = [
                str(tool.path),
                *where.args(),
                "--no-psqlrc",
                "--quiet",
                "--single-transaction",
                "--set=ON_ERROR_STOP=1",
                "--file=-",
            ]
            data = restricted_script(data, secrets.token_hex(32))
        try:
            total = _feed(command, where.env, data, tool)
        except RestoreFailed as exc:
            if dump_format == "plain" and any(mark in str(exc) for mark in _RESTRICTED):
                raise RestoreRefused(
                    f"{path} contains psql meta-commands (such as \\! shell commands), which a "
                    "restore never runs; nothing was restored"
                ) from None
            raise
    return RestoreReport(
        path, where.database, dump_format, layers, tool, total, time.monotonic() - started
    )


def restricted_script(chunks: Iterator[bytes], key: str) -> Iterator[bytes]:
    """A plain SQL dump behind `\\restrict key`: psql then refuses any meta-command.

    pg_dump starts its own output (after the header comments) with `\\restrict K` and
    ends it with `\\unrestrict K`; both are taken out, so psql stays restricted under
    our key to the end. Anything else that merely looks like them stays in and makes
    psql fail, which restores nothing: the safe side.
    """
    yield f"\\restrict {key}\n".encode()
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= HEADER_BYTES:
            break
    head, dump_key = _without_dump_restrict(head)
    if dump_key is None:
        yield head
        yield from chunks
        return
    yield from _without_line(itertools.chain([head], chunks), b"\\unrestrict " + dump_key)


def _without_dump_restrict(head: bytes) -> tuple[bytes, bytes | None]:
    """`head` without pg_dump's `\\restrict K` line, and K; only where pg_dump puts it:
    the first line that is neither blank nor an SQL comment."""
    pos = 0
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0:
            break
        line = head[pos : end + 1]
        if line.strip() and not line.startswith(b"--"):
            match = _DUMP_RESTRICT.fullmatch(line)
            if match is None:
                break
            return head[:pos] + head[end + 1 :], match.group(1)
        pos = end + 1
    return head, None


def _without_line(chunks: Iterator[bytes], line: bytes) -> Iterator[bytes]:
    """`chunks` with every whole line equal to `line` removed, streamed: a tail shorter
    than the pattern is held back in case the pattern straddles two chunks."""
    pattern = b"\n" + line + b"\n"
    carry = b"\n"  # so a match on the very first line is found too
    for chunk in chunks:
        data = (carry + chunk).replace(pattern, b"\n")
        cut = max(1, len(data) - len(pattern) + 1)
        yield data[1:cut]
        carry = data[cut - 1 :]
    ended = carry.endswith(b"\n")  # else the last line gains the newline it lacked
    data = (carry + b"\n").replace(pattern, b"\n")
    yield data[1:-1] if ended else data[1:]


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
        if isinstance(exc, BackupFileError | s3.S3Error):
            raise type(exc)(f"{exc}; nothing was restored") from None
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
