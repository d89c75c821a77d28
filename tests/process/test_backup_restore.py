"""`pgjobs backup-restore` against hostile files: psql meta-commands in plain SQL and
unencrypted files while a key is set, with the real psql / pg_restore and PostgreSQL."""

from __future__ import annotations

import gzip
import io
import itertools
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgjobs.backups.fileformat import BackupWriter
from pgjobs.backups.restore import _without_line, restricted_script
from tests.pgjobs_cli import run_pgjobs

KEY_HEX = "5f" * 16 + "a0" * 16


def restore_cli(path: Path, url: str, cwd: Path, *extra: str, key: str | None = None) -> Any:
    env = {"JOBS_BACKUP_ENCRYPTION_KEY": key} if key else {}
    return run_pgjobs(["backup-restore", str(path), "--database", url, *extra], cwd, env)


def table_exists(url: str, name: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
    return bool(row and row[0])


def hostile_scripts(marker: Path) -> dict[str, str]:
    touch = f"touch {marker}"
    return {
        "line of its own": f"CREATE TABLE pwn (x int);\n\\! {touch}\n",
        "after a statement on the same line": f"CREATE TABLE pwn (x int); \\! {touch}\n",
        "after COPY data": (
            f"CREATE TABLE pwn (x int);\nCOPY pwn (x) FROM stdin;\n1\n\\.\n\\! {touch}\n"
        ),
        "behind a forged pg_dump header": (
            "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc123\n\n"
            f"CREATE TABLE pwn (x int);\n\\unrestrict abc123\n\\! {touch}\n"
        ),
        "through \\o to a pipe": f"CREATE TABLE pwn (x int);\n\\o |{touch}\nSELECT 1;\n",
    }


@pytest.mark.parametrize(
    "case",
    [
        "line of its own",
        "after a statement on the same line",
        "after COPY data",
        "behind a forged pg_dump header",
        "through \\o to a pipe",
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_shell_meta_command_in_plain_sql_is_refused(
    empty_db_url: str, tmp_path: Path, case: str, compress: bool
) -> None:
    marker = tmp_path / "pwned"
    script = hostile_scripts(marker)[case].encode()
    backup = tmp_path / ("evil.sql.gz" if compress else "evil.sql")
    backup.write_bytes(gzip.compress(script) if compress else script)
    done = restore_cli(backup, empty_db_url, tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {backup} contains psql meta-commands (such as \\! shell commands), which a "
        "restore never runs; nothing was restored"
    ]
    assert not marker.exists()
    assert not table_exists(empty_db_url, "pwn")


def encrypted(data: bytes, path: Path) -> Path:
    out = io.BytesIO()
    writer = BackupWriter(out, compress=True, key=bytes.fromhex(KEY_HEX))
    writer.write(data)
    writer.close()
    path.write_bytes(out.getvalue())
    return path


def test_meta_command_in_an_encrypted_plain_file_is_refused_too(
    empty_db_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    backup = encrypted(
        hostile_scripts(marker)["line of its own"].encode(), tmp_path / "x.sql.gz.enc"
    )
    done = restore_cli(backup, empty_db_url, tmp_path, key=KEY_HEX)
    assert done.returncode == 2
    assert "contains psql meta-commands" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def pg_dump(url: str, *args: str) -> bytes:
    return subprocess.run(
        ["pg_dump", "--no-password", f"--dbname={url}", *args], capture_output=True, check=True
    ).stdout


@pytest.fixture
def source_url(empty_db_url: str) -> str:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE notes (id int PRIMARY KEY, body text);"
            "INSERT INTO notes VALUES (1, E'line\\n\\\\! not a command\\n\\\\.'), (2, 'plain')"
        )
    return empty_db_url


@pytest.mark.parametrize("form", ["plain.sql", "gzip.sql.gz", "custom.dump"])
def test_unencrypted_file_is_refused_while_a_key_is_set(
    source_url: str, db_url: str, tmp_path: Path, form: str
) -> None:
    dump = pg_dump(source_url, "--format=custom" if form.endswith("dump") else "--format=plain")
    backup = tmp_path / form
    backup.write_bytes(gzip.compress(dump) if form.endswith(".gz") else dump)
    done = restore_cli(backup, db_url, tmp_path, key=KEY_HEX)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {backup} is not encrypted, so JOBS_BACKUP_ENCRYPTION_KEY cannot show it is "
        "one of your backups; refusing to restore it (pass --allow-unencrypted to restore "
        "it anyway)"
    ]
    assert not table_exists(db_url, "notes")
    allowed = restore_cli(backup, db_url, tmp_path, "--allow-unencrypted", key=KEY_HEX)
    assert allowed.returncode == 0, allowed.stderr
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall()
    assert rows == [(1, "line\n\\! not a command\n\\."), (2, "plain")]


def test_hostile_unencrypted_file_with_a_key_set_is_refused_before_psql(
    empty_db_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    backup = tmp_path / "evil.sql"
    backup.write_text(hostile_scripts(marker)["line of its own"])
    done = restore_cli(backup, empty_db_url, tmp_path, key=KEY_HEX)
    assert done.returncode == 2
    assert "is not encrypted" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    allowed = restore_cli(backup, empty_db_url, tmp_path, "--allow-unencrypted", key=KEY_HEX)
    assert allowed.returncode == 2 and "contains psql meta-commands" in allowed.stderr
    assert not marker.exists()
    assert not table_exists(empty_db_url, "pwn")


def test_plain_dump_with_pg_dump_restrict_lines_round_trips_in_small_chunks() -> None:
    body = b"SELECT 1;\n\\unrestrict KEY9\nCOPY t FROM stdin;\nx\n\\.\n\\unrestrict KEY9"
    dump = b"--\n-- PostgreSQL database dump\n--\n\n\\restrict KEY9\n\n" + body
    for size in (1, 2, 5, 13, 64, 10_000):
        pieces = [dump[i : i + size] for i in range(0, len(dump), size)]
        script = b"".join(restricted_script(iter(pieces), "OURS"))
        assert script == (
            b"\\restrict OURS\n--\n-- PostgreSQL database dump\n--\n\n\n"
            b"SELECT 1;\nCOPY t FROM stdin;\nx\n\\.\n"
        ), size


def test_line_removal_never_touches_other_lines() -> None:
    text = b"\\unrestrict K\nA\\unrestrict K\n\\unrestrict KK\n \\unrestrict K\n\\unrestrict K"
    for a, b in itertools.combinations(range(len(text) + 1), 2):
        pieces = [text[:a], text[a:b], text[b:]]
        out = b"".join(_without_line(iter(pieces), b"\\unrestrict K"))
        assert out == b"A\\unrestrict K\n\\unrestrict KK\n \\unrestrict K\n", (a, b)
