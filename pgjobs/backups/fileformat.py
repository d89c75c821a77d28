"""The backup file format, written and read as a stream so memory stays flat.

A backup file is the dump as `pg_dump` wrote it, optionally gzip-compressed, optionally
encrypted. Unencrypted files are plain dumps or standard gzip files (`gunzip` reads
them). Encrypted files use this format, version 1 (all integers big-endian):

    header (46 bytes)
      magic       8 bytes   b"PGJOBSBK"
      version     1 byte    1
      flags       1 byte    bit 0: the plaintext is a gzip stream
      chunk size  4 bytes   plaintext bytes per chunk (65536)
      salt       16 bytes   random, new for every file
      key check  16 bytes   proves the key before any data is read
    chunks, until the end of the file
      ciphertext || 16-byte GCM tag; every chunk but the last holds exactly
      `chunk size` plaintext bytes, the last holds 0..chunk size

Keys: HKDF-SHA256 over the 32-byte master key (`JOBS_BACKUP_ENCRYPTION_KEY`) with the
file's salt and info b"pgjobs backup v1" yields 48 bytes: a per-file AES-256 key (32)
and the key check (16). A wrong master key is therefore reported as such, before
any output, instead of as a corrupt chunk.

Nonces: chunk i is sealed with AES-256-GCM under the per-file key, nonce = i as an
11-byte counter followed by one byte that is 1 for the final chunk and 0 otherwise,
and the 46-byte header as associated data. Because each file has its own key, the
counter nonces never repeat under one key. Reordered, dropped, duplicated or altered
chunks fail authentication; a file cut at a chunk boundary ends in a chunk that was
not sealed as final, and one cut inside a chunk fails its tag, so truncation is always
detected. Appended bytes fail too (the old final chunk is then read as non-final).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pgjobs.errors import PgJobsError

MAGIC = b"PGJOBSBK"
VERSION = 1
FLAG_GZIP = 0x01
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
HEADER = struct.Struct(">8sBBI16s16s")
INFO = b"pgjobs backup v1"
GZIP_MAGIC = b"\x1f\x8b"
CUSTOM_MAGIC = b"PGDMP"  # pg_dump's custom-format archives start with this
MAX_CHUNK_SIZE = 16 * 1024 * 1024


class BackupFileError(PgJobsError):
    """A backup file cannot be read."""

    code = "invalid_backup"


class WrongKey(BackupFileError):
    """The encryption key is not the one the file was written with."""

    code = "wrong_key"


def derive_keys(master: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """(per-file AES key, key check) for `master` and the file's `salt`."""
    if len(master) != 32:
        raise ValueError("the backup encryption key must be 32 bytes")
    okm = HKDF(algorithm=hashes.SHA256(), length=48, salt=salt, info=INFO).derive(master)
    return okm[:32], okm[32:]


def _nonce(counter: int, final: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


# ---------------------------------------------------------------- writing


class Writable(Protocol):
    """Where a backup goes: a local file, or an upload to object storage."""

    def write(self, data: bytes, /) -> object: ...


class Readable(Protocol):
    """Where a backup comes from: a local file, or a download from object storage."""

    def read(self, size: int, /) -> bytes: ...


class _Sink:
    """The destination, hashing and counting what is written to it."""

    def __init__(self, out: Writable) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.sha256.update(data)
            self.size += len(data)


class _Encryptor:
    def __init__(self, sink: _Sink, key: bytes, flags: int, chunk_size: int) -> None:
        salt = os.urandom(16)
        file_key, check = derive_keys(key, salt)
        self._header = HEADER.pack(MAGIC, VERSION, flags, chunk_size, salt, check)
        self._aead = AESGCM(file_key)
        self._sink = sink
        self._chunk = chunk_size
        self._buffer = bytearray()
        self._counter = 0
        sink.write(self._header)

    def write(self, data: bytes) -> None:
        self._buffer += data
        # Strictly more than one chunk: the last chunk must stay buffered until close()
        # knows it is the final one.
        while len(self._buffer) > self._chunk:
            self._seal(bytes(self._buffer[: self._chunk]), final=False)
            del self._buffer[: self._chunk]

    def close(self) -> None:
        self._seal(bytes(self._buffer), final=True)
        self._buffer.clear()

    def _seal(self, plain: bytes, final: bool) -> None:
        nonce = _nonce(self._counter, final)
        self._sink.write(self._aead.encrypt(nonce, plain, self._header))
        self._counter += 1


@dataclass(frozen=True, slots=True)
class Written:
    size: int
    sha256: str


class BackupWriter:
    """dump bytes -> [gzip] -> [AES-256-GCM chunks] -> `out`.

    Call `write()` with the dump as it streams in and `close()` once at the end (it does
    not close `out`); memory use is bounded by one chunk plus the compressor's window.
    """

    def __init__(
        self,
        out: Writable,
        *,
        compress: bool,
        key: bytes | None,
        level: int = 6,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self._sink = _Sink(out)
        self._gzip = zlib.compressobj(level, zlib.DEFLATED, 31) if compress else None
        self._enc = (
            _Encryptor(self._sink, key, FLAG_GZIP if compress else 0, chunk_size)
            if key is not None
            else None
        )
        self.written_input = 0

    def write(self, data: bytes) -> None:
        self.written_input += len(data)
        if self._gzip is not None:
            data = self._gzip.compress(data)
        self._emit(data)

    def close(self) -> Written:
        if self._gzip is not None:
            self._emit(self._gzip.flush(zlib.Z_FINISH))
        if self._enc is not None:
            self._enc.close()
        return Written(self._sink.size, self._sink.sha256.hexdigest())

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if self._enc is not None:
            self._enc.write(data)
        else:
            self._sink.write(data)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Layers:
    encrypted: bool
    compressed: bool


def _read_exactly(f: Readable, size: int) -> bytes:
    parts: list[bytes] = []
    remaining = size
    while remaining:
        data = f.read(remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def _decrypt(
    f: Readable, head: bytes, key: bytes | None, name: str
) -> tuple[Iterator[bytes], bool]:
    # `head`: the start of the file, already read to tell the format.
    header = head + _read_exactly(f, HEADER.size - len(head))
    if len(header) < HEADER.size:
        raise BackupFileError(f"{name}: truncated header of an encrypted backup")
    _magic, version, flags, chunk_size, salt, check = HEADER.unpack(header)
    if version != VERSION:
        raise BackupFileError(
            f"{name}: encrypted backup format version {version} is not supported (this "
            f"pgjobs reads version {VERSION})"
        )
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise BackupFileError(f"{name}: corrupt header (chunk size {chunk_size})")
    if key is None:
        raise WrongKey(f"{name} is encrypted: set JOBS_BACKUP_ENCRYPTION_KEY to its key")
    file_key, expected = derive_keys(key, salt)
    if not hmac.compare_digest(check, expected):
        raise WrongKey(f"{name} was encrypted with a different key than JOBS_BACKUP_ENCRYPTION_KEY")
    aead = AESGCM(file_key)

    def chunks() -> Iterator[bytes]:
        size = chunk_size + TAG_SIZE
        current = _read_exactly(f, size)
        counter = 0
        while True:
            following = _read_exactly(f, size) if len(current) == size else b""
            final = not following
            if len(current) < TAG_SIZE:
                raise BackupFileError(f"{name}: truncated (chunk {counter} is incomplete)")
            try:
                plain = aead.decrypt(_nonce(counter, final), current, header)
            except InvalidTag:
                raise BackupFileError(
                    f"{name}: chunk {counter} failed authentication: the file is "
                    "truncated or corrupted"
                ) from None
            yield plain
            if final:
                return
            current, counter = following, counter + 1

    return chunks(), bool(flags & FLAG_GZIP)


def _gunzip(chunks: Iterator[bytes], name: str, limit: int = CHUNK_SIZE) -> Iterator[bytes]:
    decoder = zlib.decompressobj(31)
    in_member = False  # input of a gzip member was fed and its end not seen yet
    try:
        for data in chunks:
            pending = data
            while pending:
                in_member = True
                # Bounded output per call: a small, highly compressed input must not
                # expand into one huge buffer.
                out = decoder.decompress(pending, limit)
                if out:
                    yield out
                pending = decoder.unconsumed_tail
                while out and not pending and not decoder.eof:
                    out = decoder.decompress(b"", limit)  # output zlib still holds
                    if out:
                        yield out
                if decoder.eof:
                    in_member = False
                    pending = decoder.unused_data  # another gzip member may follow
                    decoder = zlib.decompressobj(31)
    except zlib.error as exc:
        raise BackupFileError(f"{name}: corrupt gzip data ({exc})") from None
    if in_member:
        raise BackupFileError(f"{name}: truncated (the gzip data ends early)")


def read_plain(f: Readable, key: bytes | None, name: str) -> tuple[Iterator[bytes], Layers]:
    """The dump as `pg_dump` wrote it, streamed from a backup file in any of its forms
    (read front to back only, so a download streams just like a local file).

    Raises `WrongKey` / `BackupFileError` for the header at once; errors in the data
    (corruption, truncation) are raised while iterating.
    """
    head = _read_exactly(f, len(MAGIC))
    rest: Iterator[bytes]
    if head == MAGIC:
        decrypted, compressed = _decrypt(f, head, key, name)
        if compressed:
            return _gunzip(decrypted, name), Layers(True, True)
        return decrypted, Layers(True, False)
    rest = _raw(f, head)
    if head.startswith(GZIP_MAGIC):
        return _gunzip(rest, name), Layers(False, True)
    return rest, Layers(False, False)


def _raw(f: Readable, head: bytes) -> Iterator[bytes]:
    if head:
        yield head
    while data := f.read(CHUNK_SIZE):
        yield data
