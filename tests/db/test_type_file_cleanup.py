"""file-cleanup: old files under an allowed root, and old finished jobs."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pgjobs import App, FrozenClock, Job
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

DAY = 86400


def make_file(path: Path, age_days: float, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    when = time.time() - age_days * DAY
    os.utime(path, (when, when))
    return path


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    return allowed, outside


@pytest.fixture
async def cleanup_app(db_url: str, roots: tuple[Path, Path]) -> AsyncIterator[App]:
    settings = make_settings(db_url, JOBS_CLEANUP_ROOTS=f"/nonexistent-root:{roots[0]}")
    async with App(settings, clock=FrozenClock()) as application:
        yield application


async def run(app: App, payload: dict[str, Any], **options: Any) -> Job:
    job = await app.create("file-cleanup", payload, **options)
    await app.drain()
    return await app.get(job.id)


def tree(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_symlink() or not p.is_dir()
    )


async def test_deletes_exactly_the_old_matching_files(
    cleanup_app: App, roots: tuple[Path, Path]
) -> None:
    root, outside = roots
    make_file(root / "old.log", 40, size=100)
    make_file(root / "sub" / "deeper" / "old2.log", 31, size=50)
    make_file(root / "new.log", 5)
    make_file(root / "old.txt", 90)
    make_file(root / "sub" / "recent.log", 29.9)
    target = make_file(outside / "old-outside.log", 100)
    (root / "link-to-outside.log").symlink_to(target)  # old target, but never followed
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    os.utime(root / "link-to-outside.log", (0, 0), follow_symlinks=False)

    job = await run(cleanup_app, {"path": str(root), "pattern": "*.log", "olderThan": "30d"})
    assert job.status == "completed", job.last_error
    result = job.result
    assert result["target"] == "files" and result["dryRun"] is False
    assert result["deleted"] == 2 and result["bytesFreed"] == 150
    assert sorted(result["files"]) == ["old.log", "sub/deeper/old2.log"]
    assert result["skippedSymlinks"] == 2
    assert result["errors"] == []
    assert tree(root) == ["link-to-outside.log", "linkdir", "new.log", "old.txt", "sub/recent.log"]
    assert target.exists()


async def test_dry_run_deletes_nothing(cleanup_app: App, roots: tuple[Path, Path]) -> None:
    root, _ = roots
    for n in range(5):
        make_file(root / f"f{n}.tmp", 10 + n, size=7)
    before = tree(root)
    job = await run(
        cleanup_app, {"path": str(root), "olderThan": "12d", "dryRun": True, "pattern": "*.tmp"}
    )
    assert job.status == "completed", job.last_error
    assert job.result["dryRun"] is True
    assert job.result["deleted"] == 3 and job.result["bytesFreed"] == 21
    assert sorted(job.result["files"]) == ["f2.tmp", "f3.tmp", "f4.tmp"]
    assert tree(root) == before


async def test_not_recursive_and_pattern_lists(cleanup_app: App, roots: tuple[Path, Path]) -> None:
    root, _ = roots
    make_file(root / "a.csv", 100)
    make_file(root / "b.backup", 100)
    make_file(root / "c.keep", 100)
    make_file(root / "nested" / "d.csv", 100)
    job = await run(
        cleanup_app,
        {
            "path": str(root),
            "olderThan": "90d",
            "pattern": ["*.csv", "*.backup"],
            "recursive": False,
        },
    )
    assert job.result["deleted"] == 2
    assert tree(root) == ["c.keep", "nested/d.csv"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/", "path: refusing the root directory /"),
        ("/..", "path: refusing the root directory /"),
        ("relative/dir", "path: must be an absolute path"),
    ],
)
async def test_refuses_root_and_relative_paths(cleanup_app: App, path: str, message: str) -> None:
    job = await run(cleanup_app, {"path": path, "olderThan": "1d"})
    assert job.status == "failed" and job.attempts == 1
    assert message in (job.last_error or "")


async def test_refuses_paths_outside_the_roots(cleanup_app: App, roots: tuple[Path, Path]) -> None:
    root, outside = roots
    victim = make_file(outside / "precious.log", 400)
    job = await run(cleanup_app, {"path": str(outside), "olderThan": "1d"})
    assert job.status == "failed" and "is outside the directories in JOBS_CLEANUP_ROOTS" in (
        job.last_error or ""
    )
    sneaky = await run(cleanup_app, {"path": f"{root}/../outside", "olderThan": "1d"})
    assert sneaky.status == "failed" and "is outside" in (sneaky.last_error or "")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    escaped = await run(cleanup_app, {"path": str(root / "escape"), "olderThan": "1d"})
    assert escaped.status == "failed"
    assert "leads through a symlink" in (escaped.last_error or "")
    assert victim.exists()


async def test_no_roots_configured_means_no_file_cleanup(db_url: str, tmp_path: Path) -> None:
    make_file(tmp_path / "x.log", 100)
    async with App(make_settings(db_url)) as app:
        job = await run(app, {"path": str(tmp_path), "olderThan": "1d"})
    assert job.status == "failed"
    assert "JOBS_CLEANUP_ROOTS does not list any directory" in (job.last_error or "")
    assert (tmp_path / "x.log").exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"target": "files", "olderThan": "1d"}, "path: required"),
        ({"target": "disk"}, 'target: must be "jobs" or "files"'),
        ({"path": "ROOT"}, "olderThan: required"),
        ({"path": "ROOT", "olderThan": "soon"}, "olderThan: must be a duration"),
        ({"path": "ROOT", "olderThan": "1d", "pattern": "a/*.log"}, "pattern: matches file names"),
    ],
)
async def test_bad_payload_is_discarded(
    cleanup_app: App, roots: tuple[Path, Path], payload: dict[str, Any], message: str
) -> None:
    if payload.get("path") == "ROOT":
        payload = {**payload, "path": str(roots[0])}
    job = await run(cleanup_app, payload)
    assert job.status == "failed" and job.attempts == 1
    assert message in (job.last_error or "")


# ---------------------------------------------------------------- target: jobs


async def finished_jobs(app: App, db: Any) -> dict[str, list[Any]]:
    """Completed and failed jobs, finished 2 days and 10 days before now."""

    @app.handler("noop")
    async def noop(ctx: Any, payload: Any) -> None:
        if payload.get("fail"):
            raise RuntimeError("boom")

    ids: dict[str, list[Any]] = {}
    for name, fail in (("completed", False), ("failed", True)):
        ids[name] = [
            (await app.create("noop", {"fail": fail}, attempts=1, queue="work")).id
            for _ in range(2)
        ]
    await app.drain("work")
    for recent, old in ids.values():
        for job_id, age in ((recent, 2), (old, 10)):
            db.execute(
                "UPDATE jobs SET completed_at = %s - make_interval(days => %s) WHERE id = %s",
                (app.clock.now(), age, job_id),
            )
    return ids


def remaining(db: Any, ids: dict[str, list[Any]]) -> set[Any]:
    everyone = [i for group in ids.values() for i in group]
    rows = db.execute("SELECT id FROM jobs WHERE id = ANY(%s)", (everyone,)).fetchall()
    return {row["id"] for row in rows}


async def test_prunes_finished_jobs_by_age(cleanup_app: App, db: Any) -> None:
    ids = await finished_jobs(cleanup_app, db)
    dry = await run(
        cleanup_app,
        {"target": "jobs", "completedOlderThan": "1d", "failedOlderThan": "7d", "dryRun": True},
    )
    assert dry.result == {
        "target": "jobs",
        "dryRun": True,
        "completed": 2,
        "failed": 1,
        "deleted": 3,
        "completedOlderThanMs": DAY * 1000,
        "failedOlderThanMs": 7 * DAY * 1000,
    }
    assert len(remaining(db, ids)) == 4

    job = await run(
        cleanup_app, {"target": "jobs", "completedOlderThan": "1d", "failedOlderThan": "7d"}
    )
    assert job.status == "completed", job.last_error
    assert (job.result["completed"], job.result["failed"]) == (2, 1)
    assert remaining(db, ids) == {ids["failed"][0]}


async def test_jobs_target_defaults_to_the_clean_settings(db_url: str, db: Any) -> None:
    settings = make_settings(
        db_url,
        JOBS_CLEAN_COMPLETED_AFTER=str(5 * DAY * 1000),
        JOBS_CLEAN_FAILED_AFTER=str(DAY * 1000),
    )
    async with App(settings, clock=FrozenClock()) as app:
        ids = await finished_jobs(app, db)
        job = await run(app, {})  # no path: the jobs target
        assert job.result["completedOlderThanMs"] == 5 * DAY * 1000
        assert (job.result["completed"], job.result["failed"]) == (1, 2)
        assert remaining(db, ids) == {ids["completed"][0]}
        both = await run(app, {"olderThan": "1d"})
        assert both.result["completedOlderThanMs"] == both.result["failedOlderThanMs"] == DAY * 1000
        assert remaining(db, ids) == set()
