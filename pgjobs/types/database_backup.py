"""`database-backup`: run the real `pg_dump` and stream its output into a backup file.

pg_dump's stdout flows through gzip and AES-256-GCM in chunks straight to
`<destination>/<database>-<UTC time>-<job>.<dump|sql>[.gz][.enc]`, so memory stays flat
whatever the database size (see pgjobs/backups/fileformat.py for the file format).
The destination is a local directory or an `s3://bucket/prefix` (the same bytes under
the same name, sent as a multipart upload: pgjobs/backups/s3.py). A local file is
written under a `.partial` name with mode 0600 and renamed only once pg_dump
succeeded; an upload is completed only then, and aborted otherwise. A failed or
cancelled run leaves nothing behind. `pgjobs backup-restore` reads every form back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pgjobs.backups import s3
from pgjobs.backups.fileformat import BackupWriter
from pgjobs.backups.pgtools import PgTool, PgToolNotFound, find_tool, target
from pgjobs.backups.sources import DumpSource, resolve
from pgjobs.db import connect_async
from pgjobs.errors import Discard, ServiceUnavailable, ValidationError
from pgjobs.queries import query
from pgjobs.types import payload as p
from pgjobs.types.paths import confine

if TYPE_CHECKING:
    from pgjobs.config import Settings
    from pgjobs.context import JobContext

TYPE = "database-backup"
KNOWN_FIELDS = frozenset({"database", "destination", "format", "compress", "encrypt", "retention"})
FORMATS = {"custom": "dump", "plain": "sql"}
READ_SIZE = 1024 * 1024
PROGRESS_EVERY_S = 0.5


class BackupFailed(Exception):
    """pg_dump failed (the job is retried)."""


@dataclass(frozen=True, slots=True)
class BackupRequest:
    source: DumpSource
    destination: Path | s3.S3Location
    format: str
    compress: bool
    encrypt: bool
    retention: int | None


def parse(payload: Any, settings: Settings) -> BackupRequest:
    """The request, or `Discard` naming the field. Checked when the job is created and
    again by the worker: rows written straight into the table skip the first check."""
    data = p.as_object(payload)
    source = resolve(p.text(data, "database", None), settings)
    fmt = p.text(data, "format", "custom")
    if fmt not in FORMATS:
        raise p.bad("format", f"must be custom or plain (got {fmt!r})")
    encrypt = p.flag(data, "encrypt")
    if encrypt and settings.backup_encryption_key is None:
        raise p.bad("encrypt", "JOBS_BACKUP_ENCRYPTION_KEY is not set on the worker")
    return BackupRequest(
        source=source,
        destination=_destination(data, settings),
        format=fmt,
        compress=p.flag(data, "compress"),
        encrypt=encrypt,
        retention=p.integer(data, "retention", None, minimum=1),
    )


def _destination(data: dict[str, Any], settings: Settings) -> Path | s3.S3Location:
    raw = p.text(data, "destination", settings.backup_dir)
    if raw is None:
        raise p.bad("destination", "required (or set JOBS_BACKUP_DIR)")
    if s3.is_s3_url(raw):
        try:
            return s3.parse_url(raw, want_object=False)
        except ValueError as exc:
            raise p.bad("destination", str(exc)) from None
    if "://" in raw:
        raise p.bad(
            "destination",
            f"must be a local directory or s3://bucket/prefix (got {raw[:80]!r}; no other "
            "kind of URL is supported)",
        )
    setting = "JOBS_BACKUP_ROOTS" if settings.backup_roots else "JOBS_BACKUP_DIR"
    return confine(raw, settings.backup_destination_roots, field="destination", setting=setting)


def check(payload: Any, settings: Settings) -> None:
    """Refuse at creation (`ValidationError`) a payload the worker would discard."""
    try:
        parse(payload, settings)
    except Discard as exc:
        field = str(exc).split(":", 1)[0]
        raise ValidationError(f"{TYPE}: {exc}", field=field) from None


def safe_name(database: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", database).strip(".") or "database"


def file_name(database: str, when: str, job_suffix: str, request: BackupRequest) -> str:
    name = f"{safe_name(database)}-{when}-{job_suffix}.{FORMATS[request.format]}"
    if request.compress:
        name += ".gz"
    if request.encrypt:
        name += ".enc"
    return name


def _name_pattern(database: str) -> re.Pattern[str]:
    """This database's backup file names; group 1 is the timestamp."""
    return re.compile(
        rf"^{re.escape(safe_name(database))}-(\d{{8}}T\d{{6}}Z)-[0-9a-f]{{8}}"
        r"\.(?:dump|sql)(?:\.gz)?(?:\.enc)?$"
    )


def _backups_of(directory: Path, database: str) -> list[tuple[str, Path]]:
    """(timestamp, path) of this database's backup files in `directory`."""
    pattern = _name_pattern(database)
    found = []
    for entry in directory.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_file() and not entry.is_symlink():
            found.append((match.group(1), entry))
    return found


def apply_retention(directory: Path, database: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` backups of `database`; return the removed paths."""
    backups = sorted(
        _backups_of(directory, database), key=lambda b: (b[0], b[1].stat().st_mtime_ns)
    )
    removed = []
    for _, path in backups[: max(0, len(backups) - keep)]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(str(path))
    return removed


def apply_s3_retention(client: Any, location: s3.S3Location, database: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` backups of `database` directly under `location`
    (the same names as in a directory); return the removed URLs."""
    pattern = _name_pattern(database)
    backups = []
    for listed in s3.list_names(client, location):
        match = pattern.match(listed.name)
        if match:
            backups.append((match.group(1), listed.modified, location.child(listed.name)))
    backups.sort(key=lambda b: (b[0], b[1]))
    removed = []
    for _, _, old in backups[: max(0, len(backups) - keep)]:
        s3.delete(client, old)
        removed.append(old.url)
    return removed


@dataclass(frozen=True, slots=True)
class Source:
    major: int
    version: str
    database: str
    size_bytes: int


async def source_info(url: str) -> Source:
    try:
        conn = await connect_async(url, "backup")
    except ServiceUnavailable as exc:
        raise ServiceUnavailable(
            str(exc).replace("check DATABASE_URL", "check the job's database")
        ) from exc
    try:
        cur = await conn.execute(query("backup_source_info"))
        row = await cur.fetchone()
    finally:
        await conn.close()
    assert row is not None
    return Source(
        int(row["server_version_num"]) // 10000,
        str(row["server_version"]),
        str(row["database"]),
        int(row["size_bytes"]),
    )


def dump_command(tool: PgTool, request: BackupRequest, conn_args: list[str]) -> list[str]:
    command = [str(tool.path), f"--format={request.format}", "--no-password", *conn_args]
    if request.format == "custom":
        # Compression is ours (gzip, then encryption); pg_dump's own would make the
        # "compress" flag meaningless and gzip would only waste time on it.
        command.append("--compress=0")
    return command


async def handle(ctx: JobContext, payload: Any) -> dict[str, Any]:
    settings = ctx.app.settings
    unknown = p.unknown_fields(p.as_object(payload), KNOWN_FIELDS)
    if unknown:
        ctx.logger.warning("database-backup ignores unknown payload fields: %s", unknown)
    request = await asyncio.to_thread(parse, payload, settings)  # resolves symlinks
    started = time.monotonic()
    source = await source_info(request.source.url)
    try:
        tool = await asyncio.to_thread(find_tool, "pg_dump", source.major, settings)
    except PgToolNotFound as exc:
        raise Discard(str(exc)) from None
    when = ctx.app.clock.now().strftime("%Y%m%dT%H%M%SZ")
    name = file_name(source.database, when, ctx.id.hex[-8:], request)
    await ctx.progress(0, f"dumping {source.database} with pg_dump {tool.version}")
    # Nothing may be awaited between creating the output and _dump(), which removes it
    # on any failure.
    output: _Output
    if isinstance(request.destination, s3.S3Location):
        try:
            client = await asyncio.to_thread(s3.client, settings)
        except s3.S3Unavailable as exc:
            raise Discard(str(exc)) from None
        output = _Upload(client, request.destination.child(name))
    else:
        directory = request.destination
        await asyncio.to_thread(directory.mkdir, mode=0o700, parents=True, exist_ok=True)
        output = _LocalFile(directory / name)
    written = await _dump(ctx, tool, request, source, output)
    removed = await asyncio.to_thread(output.publish, request.retention, source.database)
    return {
        "path": output.where,
        "size": written.size,
        "sha256": written.sha256,
        "durationMs": round((time.monotonic() - started) * 1000),
        "database": source.database,
        "format": request.format,
        "compressed": request.compress,
        "encrypted": request.encrypt,
        "dumpBytes": written.dump_bytes,
        "serverVersion": source.version,
        "pgDump": {"path": str(tool.path), "version": tool.version},
        "removed": removed,
    }


@dataclass(frozen=True, slots=True)
class _Written:
    size: int
    sha256: str
    dump_bytes: int


class _Output(Protocol):
    """Where the backup's bytes go: `write()` while dumping, then `finish()` once pg_dump
    succeeded (nothing is visible before), or `discard()`; `publish()` last."""

    @property
    def where(self) -> str: ...

    def write(self, data: bytes, /) -> object: ...

    def finish(self) -> None: ...

    def discard(self) -> None: ...

    def publish(self, retention: int | None, database: str) -> list[str]: ...


class _LocalFile:
    """A file written under a `.partial` name with mode 0600, renamed by `publish()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._out = os.fdopen(fd, "wb")

    @property
    def where(self) -> str:
        return str(self.path)

    def write(self, data: bytes, /) -> object:
        return self._out.write(data)

    def finish(self) -> None:
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()

    def discard(self) -> None:
        self._out.close()
        _remove(self.partial)

    def publish(self, retention: int | None, database: str) -> list[str]:
        """Give the finished file its final name, then apply retention."""
        os.replace(self.partial, self.path)
        if retention is None:
            return []
        return apply_retention(self.path.parent, database, retention)


class _Upload:
    """An object in S3, uploaded in parts and completed by `finish()`."""

    def __init__(self, client: Any, location: s3.S3Location) -> None:
        self._client = client
        self._upload = s3.MultipartUpload(client, location)
        self.location = location

    @property
    def where(self) -> str:
        return self.location.url

    def write(self, data: bytes, /) -> object:
        return self._upload.write(data)

    def finish(self) -> None:
        self._upload.complete()

    def discard(self) -> None:
        self._upload.abort()

    def publish(self, retention: int | None, database: str) -> list[str]:
        if retention is None:
            return []
        folder = s3.S3Location(self.location.bucket, self.location.key.rpartition("/")[0])
        return apply_s3_retention(self._client, folder, database, retention)


async def _dump(
    ctx: JobContext, tool: PgTool, request: BackupRequest, source: Source, out: _Output
) -> _Written:
    key = ctx.app.settings.backup_encryption_key if request.encrypt else None
    where = target(request.source.url, "backup", request.source.child_env())
    proc: asyncio.subprocess.Process | None = None
    drain_errors: asyncio.Task[None] | None = None
    complete = False
    try:
        writer = BackupWriter(out, compress=request.compress, key=key)
        proc = await asyncio.create_subprocess_exec(
            *dump_command(tool, request, where.args()),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=where.env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        errors: collections.deque[str] = collections.deque(maxlen=20)
        drain_errors = asyncio.create_task(_collect(proc.stderr, errors))
        dumped = 0
        reported = time.monotonic()
        while chunk := await proc.stdout.read(READ_SIZE):
            # gzip and AES work in a thread: the worker's other jobs keep running.
            await asyncio.to_thread(writer.write, chunk)
            dumped += len(chunk)
            if time.monotonic() - reported >= PROGRESS_EVERY_S:
                reported = time.monotonic()
                percent = min(99.0, 100.0 * dumped / max(source.size_bytes, 1))
                await ctx.progress(percent, f"{dumped / 1048576:.1f} MiB dumped")
        code = await proc.wait()
        await drain_errors
        if code != 0:
            detail = " | ".join(list(errors)[-3:]) or "no error output"
            raise BackupFailed(f"pg_dump {tool.version} exited with status {code}: {detail}")
        result = await asyncio.to_thread(writer.close)
        await asyncio.to_thread(out.finish)
        complete = True
        return _Written(result.size, result.sha256, dumped)
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        if drain_errors is not None and not drain_errors.done():
            drain_errors.cancel()
        if not complete:
            # Aborting an upload is a network call: shielded, so a cancelled job still
            # leaves no parts behind.
            await asyncio.shield(asyncio.to_thread(out.discard))


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def _collect(stream: asyncio.StreamReader, lines: collections.deque[str]) -> None:
    pending = b""
    while data := await stream.read(65536):
        *complete, pending = (pending + data).split(b"\n")
        pending = pending[-4096:]  # a runaway line must not grow without bound
        lines.extend(t for raw in complete if (t := raw.decode("utf-8", "replace").strip()))
    if pending.strip():
        lines.append(pending.decode("utf-8", "replace").strip())
