"""The backup file format: round trips in every form, and every kind of damage detected."""

from __future__ import annotations

import gzip
import io
import os

import pytest

from pgjobs.backups.fileformat import (
    HEADER,
    MAGIC,
    BackupFileError,
    BackupWriter,
    Layers,
    WrongKey,
    read_plain,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(32)
SMALL = 64  # a tiny chunk size makes every boundary case cheap to reach


def write(data: bytes, *, compress: bool, key: bytes | None, chunk: int = SMALL) -> bytes:
    out = io.BytesIO()
    writer = BackupWriter(out, compress=compress, key=key, chunk_size=chunk)
    # Feed in uneven pieces, as a pipe would.
    step = 1
    pos = 0
    while pos < len(data):
        writer.write(data[pos : pos + step])
        pos += step
        step = step * 3 % 97 + 1
    written = writer.close()
    assert written.size == len(out.getvalue())
    return out.getvalue()


def read(blob: bytes, key: bytes | None = KEY) -> tuple[bytes, Layers]:
    chunks, layers = read_plain(io.BytesIO(blob), key, "backup.bin")
    return b"".join(chunks), layers


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL, 3 * SMALL + 5])
@pytest.mark.parametrize(
    ("compress", "encrypt"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_round_trip(size: int, compress: bool, encrypt: bool) -> None:
    data = os.urandom(size // 2) + b"A" * (size - size // 2)
    blob = write(data, compress=compress, key=KEY if encrypt else None)
    plain, layers = read(blob)
    assert plain == data
    assert layers == Layers(encrypted=encrypt, compressed=compress)
    if compress and not encrypt:
        assert gzip.decompress(blob) == data  # a standard gzip file
    if encrypt:
        assert blob.startswith(MAGIC)
        assert data[:16] not in blob or size < 16


def test_chunks_are_sized_and_the_header_is_documented() -> None:
    blob = write(b"x" * (2 * SMALL + 10), compress=False, key=KEY)
    magic, version, flags, chunk, _salt, _check = HEADER.unpack(blob[: HEADER.size])
    assert (magic, version, flags, chunk) == (MAGIC, 1, 0, SMALL)
    # two full chunks and a final one of 10 bytes, each with a 16-byte tag
    assert len(blob) == HEADER.size + 2 * (SMALL + 16) + (10 + 16)
    assert HEADER.unpack(write(b"", compress=True, key=KEY)[: HEADER.size])[2] == 1


def test_same_data_never_encrypts_the_same_way() -> None:
    a = write(b"secret" * 50, compress=False, key=KEY)
    b = write(b"secret" * 50, compress=False, key=KEY)
    assert a != b and len(a) == len(b)


def test_wrong_or_missing_key_is_reported_before_any_data() -> None:
    blob = write(b"data" * 100, compress=True, key=KEY)
    with pytest.raises(WrongKey, match="encrypted with a different key"):
        read_plain(io.BytesIO(blob), OTHER_KEY, "b")
    with pytest.raises(WrongKey, match="set JOBS_BACKUP_ENCRYPTION_KEY"):
        read_plain(io.BytesIO(blob), None, "b")


@pytest.mark.parametrize("compress", [False, True])
def test_every_truncation_is_detected(compress: bool) -> None:
    data = os.urandom(5 * SMALL)
    blob = write(data, compress=compress, key=KEY)
    for cut in range(HEADER.size, len(blob)):
        with pytest.raises(BackupFileError, match=r"truncated|failed authentication"):
            read(blob[:cut])
    assert read(blob)[0] == data


def test_tampering_reordering_and_appending_are_detected() -> None:
    data = os.urandom(4 * SMALL)
    blob = bytearray(write(data, compress=False, key=KEY))
    for position in (HEADER.size + 3, len(blob) - 1, HEADER.size + SMALL + 20):
        damaged = bytearray(blob)
        damaged[position] ^= 1
        with pytest.raises(BackupFileError, match="failed authentication"):
            read(bytes(damaged))
    size = SMALL + 16
    first = blob[HEADER.size : HEADER.size + size]
    second = blob[HEADER.size + size : HEADER.size + 2 * size]
    swapped = blob[: HEADER.size] + second + first + blob[HEADER.size + 2 * size :]
    with pytest.raises(BackupFileError, match="chunk 0 failed authentication"):
        read(bytes(swapped))
    with pytest.raises(BackupFileError):
        read(bytes(blob) + os.urandom(SMALL + 16))
    header_flip = bytearray(blob)
    header_flip[9] ^= 1  # the flags byte is authenticated as associated data
    with pytest.raises(BackupFileError):
        read(bytes(header_flip))


def test_plain_gzip_truncation_and_garbage_are_detected() -> None:
    data = os.urandom(1000)
    blob = write(data, compress=True, key=None)
    with pytest.raises(BackupFileError, match="truncated"):
        read(blob[:-9])
    with pytest.raises(BackupFileError, match="corrupt gzip"):
        read(blob + b"not gzip at all")
    # concatenated gzip members are one stream, as gunzip reads them
    assert read(blob + gzip.compress(b"more"))[0] == data + b"more"


def test_decompression_output_is_bounded_per_piece() -> None:
    bomb = gzip.compress(b"\0" * 5_000_000)  # ~5 KB that expands to 5 MB
    chunks, _ = read_plain(io.BytesIO(bomb), None, "b")
    sizes = [len(c) for c in chunks]
    assert sum(sizes) == 5_000_000
    assert max(sizes) <= 64 * 1024


def test_unknown_version_is_refused() -> None:
    blob = bytearray(write(b"x", compress=False, key=KEY))
    blob[8] = 9
    with pytest.raises(BackupFileError, match="format version 9 is not supported"):
        read(bytes(blob))


def test_raw_and_custom_dumps_pass_through() -> None:
    assert read(b"PGDMP\x01\x0e rest", None) == (b"PGDMP\x01\x0e rest", Layers(False, False))
    assert read(b"-- PostgreSQL database dump", None)[0] == b"-- PostgreSQL database dump"
