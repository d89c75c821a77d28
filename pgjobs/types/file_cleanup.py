"""`file-cleanup`: prune old finished jobs, or delete old files.

`target: "jobs"` (the default without a `path`) deletes completed jobs older than
`completedOlderThan` and failed/cancelled ones older than `failedOlderThan` (`olderThan`
sets both; defaults `JOBS_CLEAN_COMPLETED_AFTER` / `JOBS_CLEAN_FAILED_AFTER`), through
the same operation as `pgjobs clean`.

`target: "files"` deletes regular files under `path` whose name matches `pattern` and
whose modification time is older than `olderThan`. `path` must resolve inside one of
`JOBS_CLEANUP_ROOTS`; `/` is always refused. The walk never follows a symlink and never
deletes one (they are counted as skipped), and removes files through directory handles
so a directory swapped for a symlink mid-walk cannot redirect it. `dryRun` reports what
would be deleted and deletes nothing.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgjobs.retention import clean_finished
from pgjobs.types import payload as p
from pgjobs.types.paths import confine

if TYPE_CHECKING:
    from pgjobs.config import Settings
    from pgjobs.context import JobContext

TYPE = "file-cleanup"
KNOWN_FIELDS = frozenset(
    {
        "target",
        "path",
        "pattern",
        "olderThan",
        "completedOlderThan",
        "failedOlderThan",
        "recursive",
        "dryRun",
    }
)
SAMPLE = 100  # paths listed in the result
MAX_ERRORS = 20


@dataclass(frozen=True, slots=True)
class JobsCleanup:
    completed_after_ms: int
    failed_after_ms: int
    dry_run: bool


@dataclass(frozen=True, slots=True)
class FilesCleanup:
    root: Path
    patterns: tuple[str, ...]
    older_than_s: float
    recursive: bool
    dry_run: bool


def parse(payload: Any, settings: Settings) -> JobsCleanup | FilesCleanup:
    data = p.as_object(payload)
    target = p.text(data, "target", "files" if "path" in data else "jobs")
    if target == "jobs":
        both = p.duration_seconds(data, "olderThan", None)
        completed = p.duration_seconds(
            data,
            "completedOlderThan",
            both if both is not None else settings.clean_completed_after_ms / 1000,
        )
        failed = p.duration_seconds(
            data,
            "failedOlderThan",
            both if both is not None else settings.clean_failed_after_ms / 1000,
        )
        return JobsCleanup(round(completed * 1000), round(failed * 1000), p.flag(data, "dryRun"))
    if target != "files":
        raise p.bad("target", f'must be "jobs" or "files" (got {target!r})')
    root = confine(
        p.text(data, "path"), settings.cleanup_roots, field="path", setting="JOBS_CLEANUP_ROOTS"
    )
    if not root.is_dir():
        raise p.bad("path", f"{root} is not a directory")
    raw = data.get("pattern", "*")
    patterns = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(patterns, list)
        or not patterns
        or not all(isinstance(x, str) and x for x in patterns)
    ):
        raise p.bad("pattern", "must be a glob such as *.log, or a list of globs")
    if any("/" in x for x in patterns):
        raise p.bad("pattern", "matches file names, so it cannot contain /")
    return FilesCleanup(
        root=root,
        patterns=tuple(patterns),
        older_than_s=p.duration_seconds(data, "olderThan"),
        recursive=p.flag(data, "recursive", True),
        dry_run=p.flag(data, "dryRun"),
    )


# ---------------------------------------------------------------- files


@dataclass
class FilesReport:
    deleted: int = 0
    bytes_freed: int = 0
    kept: int = 0
    skipped_symlinks: int = 0
    errors: list[str] = field(default_factory=list)
    sample: list[str] = field(default_factory=list)
    stopped: bool = False


def clean_files(
    request: FilesCleanup,
    now: float,
    cancelled: Callable[[], bool] = lambda: False,
    progress: Callable[[int], None] = lambda _: None,
) -> FilesReport:
    """Delete (or, in a dry run, count) the old matching files under `request.root`."""
    report = FilesReport()
    cutoff = now - request.older_than_s
    seen = 0
    for dirpath, dirnames, filenames, dirfd in os.fwalk(request.root, follow_symlinks=False):
        for name in list(dirnames):
            if _is_symlink(name, dirfd):
                report.skipped_symlinks += 1
        if not request.recursive:
            dirnames.clear()
        for name in filenames:
            seen += 1
            if seen % 1000 == 0:
                progress(seen)
                if cancelled():
                    report.stopped = True
                    return report
            relative = os.path.relpath(os.path.join(dirpath, name), request.root)
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
            if stat.S_ISLNK(st.st_mode):
                report.skipped_symlinks += 1
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if st.st_mtime >= cutoff or not any(
                fnmatch.fnmatchcase(name, pattern) for pattern in request.patterns
            ):
                report.kept += 1
                continue
            if not request.dry_run:
                try:
                    os.unlink(name, dir_fd=dirfd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if len(report.errors) < MAX_ERRORS:
                        report.errors.append(f"{relative}: {exc.strerror or exc}")
                    continue
            report.deleted += 1
            report.bytes_freed += st.st_size
            if len(report.sample) < SAMPLE:
                report.sample.append(relative)
    return report


def _is_symlink(name: str, dirfd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


# ---------------------------------------------------------------- handler


async def handle(ctx: JobContext, payload: Any) -> dict[str, Any]:
    settings = ctx.app.settings
    unknown = p.unknown_fields(p.as_object(payload), KNOWN_FIELDS)
    if unknown:
        ctx.logger.warning("file-cleanup ignores unknown payload fields: %s", unknown)
    request = await asyncio.to_thread(parse, payload, settings)
    if isinstance(request, JobsCleanup):
        return await _clean_jobs(ctx, request)
    report = await asyncio.to_thread(
        clean_files,
        request,
        time.time(),
        lambda: ctx.cancelled,
        lambda seen: ctx.progress_sync(0, f"{seen} files examined"),
    )
    return {
        "target": "files",
        "path": str(request.root),
        "dryRun": request.dry_run,
        "deleted": report.deleted,
        "bytesFreed": report.bytes_freed,
        "kept": report.kept,
        "skippedSymlinks": report.skipped_symlinks,
        "errors": report.errors,
        "files": report.sample,
        "stopped": report.stopped,
    }


async def _clean_jobs(ctx: JobContext, request: JobsCleanup) -> dict[str, Any]:
    app = ctx.app
    report = await clean_finished(
        app.connection,
        app.settings,
        app.clock,
        completed_older_than_ms=request.completed_after_ms,
        failed_older_than_ms=request.failed_after_ms,
        dry_run=request.dry_run,
        actor=f"job:{TYPE}:{ctx.id}",
    )
    return {
        "target": "jobs",
        "dryRun": request.dry_run,
        "completed": report.completed,
        "failed": report.failed,
        "deleted": report.total,
        "completedOlderThanMs": request.completed_after_ms,
        "failedOlderThanMs": request.failed_after_ms,
    }
