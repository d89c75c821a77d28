"""Backups in S3-compatible object storage: `s3://bucket/prefix` locations, streamed
multipart uploads, listing and deleting for retention, and streamed downloads.

boto3 is optional (`pip install pgjobs[s3]`) and imported on first use. Credentials and
region come from boto3's default chain (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_PROFILE`, ~/.aws, instance and task roles); the
endpoint from `JOBS_BACKUP_S3_ENDPOINT`, else boto3's own `AWS_ENDPOINT_URL`, else AWS.

An upload holds at most one part in memory and nothing on disk. It becomes visible
only when it is completed, so a failed or cancelled backup leaves no object behind (the
multipart upload is aborted).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pgjobs.errors import PgJobsError

if TYPE_CHECKING:
    from pgjobs.config import Settings

SCHEME = "s3://"
# Bytes per uploaded part. S3 wants at least 5 MiB for every part but the last and
# allows 10,000 parts, so the size doubles every PARTS_PER_SIZE parts: 8 MiB parts
# cover 8 GB, and the doubling takes one upload well past S3's 5 TB object limit.
PART_SIZE = 8 * 1024 * 1024
PARTS_PER_SIZE = 1000
READ_SIZE = 1024 * 1024
INSTALL_HINT = "pip install pgjobs[s3]"

# S3's bucket naming rules (3-63 characters, lower-case letters, digits, dots and
# hyphens, a letter or digit at both ends).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# AWS's "safe characters" for key names: no escaping, no surprise in a URL or a shell.
_SEGMENT = re.compile(r"[A-Za-z0-9!_.*'()-]+")
MAX_KEY = 1024


class S3Error(PgJobsError):
    """Object storage refused or failed a request."""

    code = "s3_error"


class S3Unavailable(S3Error):
    """boto3 is not installed."""

    code = "s3_unavailable"


@dataclass(frozen=True, slots=True)
class S3Location:
    """A bucket and a key (an object's, or a prefix without its trailing `/`)."""

    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"

    @property
    def prefix(self) -> str:
        """The key prefix of the objects "in" this location."""
        return f"{self.key}/" if self.key else ""

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, self.prefix + name)


def is_s3_url(raw: str) -> bool:
    return raw[: len(SCHEME)].lower() == SCHEME


def parse_url(raw: str, *, want_object: bool) -> S3Location:
    """`s3://bucket[/prefix]` (or, with `want_object`, `s3://bucket/key`) as a location;
    ValueError says what is wrong."""
    rest = raw[len(SCHEME) :] if is_s3_url(raw) else None
    if rest is None:
        raise ValueError(f"must start with {SCHEME} (got {raw[:80]!r})")
    bucket, _, key = rest.partition("/")
    example = "s3://bucket/path/file" if want_object else "s3://bucket/prefix"
    if not bucket:
        raise ValueError(f"{raw[:80]!r} names no bucket: use {example}")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"{bucket[:80]!r} is not an S3 bucket name (3-63 lower-case letters, digits, "
            "dots and hyphens)"
        )
    key = key.rstrip("/") if not want_object else key
    segments = key.split("/") if key else []
    for segment in segments:
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise ValueError(
                f"{raw[:80]!r}: every part of the key must be letters, digits and !_.*'()- "
                "(no empty parts, . or ..)"
            )
    if len(key.encode()) > MAX_KEY - 100:  # room for the file name under a prefix
        raise ValueError(f"{raw[:80]!r}: the key is too long")
    if want_object and not key:
        raise ValueError(f"{raw[:80]!r} names no object: use {example}")
    return S3Location(bucket, key)


def client(settings: Settings) -> Any:
    """An S3 client from boto3's default credential chain (`S3Unavailable` without boto3)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise S3Unavailable(f"s3:// backups need boto3: {INSTALL_HINT}") from None
    with errors("S3"):
        # A session of its own: boto3's shared default session is not safe to create
        # clients from in several threads at once (two backups in one worker).
        return boto3.session.Session().client(
            "s3",
            endpoint_url=settings.backup_s3_endpoint,
            config=Config(retries={"mode": "standard", "max_attempts": 5}),
        )


@contextlib.contextmanager
def errors(what: str, location: S3Location | None = None) -> Iterator[None]:
    """botocore's exceptions as one-line `S3Error`s saying what failed and what to do."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError:
        raise S3Error(
            f"{what}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or use a profile or an instance role)"
        ) from None
    except ClientError as exc:
        raise S3Error(f"{what}: {_client_error(exc.response, location)}") from None
    except BotoCoreError as exc:
        raise S3Error(f"{what}: {exc}") from None


def _client_error(response: dict[str, Any], location: S3Location | None) -> str:
    error = response.get("Error", {})
    code = str(error.get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    bucket = location.bucket if location else "?"
    if code == "NoSuchBucket":
        return f"bucket {bucket!r} does not exist"
    if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and not code):
        return f"no such object {location.url if location else ''}".rstrip()
    if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return (
            f"access denied to bucket {bucket!r} ({code}): check the credentials and "
            "their permissions"
        )
    message = str(error.get("Message", "")).strip()
    return f"{code or status}: {message}" if message else str(code or status)


class MultipartUpload:
    """A write-only file whose bytes go to one S3 object in parts.

    `write()` keeps at most one part in memory; `complete()` publishes the object (a
    single PUT when everything fit in one part), `abort()` drops what was sent.
    """

    def __init__(self, s3: Any, location: S3Location) -> None:
        self._s3 = s3
        self.location = location
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    @property
    def parts(self) -> int:
        """Parts sent so far (0 for an object sent in a single PUT)."""
        return len(self._parts)

    def _part_size(self) -> int:
        return PART_SIZE << min(len(self._parts) // PARTS_PER_SIZE, 9)

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) >= self._part_size():
            size = self._part_size()
            self._send(bytes(self._buffer[:size]))
            del self._buffer[:size]
        return len(data)

    def _send(self, body: bytes) -> None:
        where = self.location
        with errors(f"uploading {where.url}", where):
            if self._upload_id is None:
                created = self._s3.create_multipart_upload(
                    Bucket=where.bucket, Key=where.key, ContentType="application/octet-stream"
                )
                self._upload_id = str(created["UploadId"])
            number = len(self._parts) + 1
            sent = self._s3.upload_part(
                Bucket=where.bucket,
                Key=where.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
            )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})

    def complete(self) -> None:
        where = self.location
        if self._upload_id is None:
            with errors(f"uploading {where.url}", where):
                self._s3.put_object(
                    Bucket=where.bucket,
                    Key=where.key,
                    Body=bytes(self._buffer),
                    ContentType="application/octet-stream",
                )
            self._buffer.clear()
            return
        if self._buffer:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        with errors(f"uploading {where.url}", where):
            self._s3.complete_multipart_upload(
                Bucket=where.bucket,
                Key=where.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )

    def abort(self) -> None:
        """Drop the parts sent so far; never raises (it runs while another error is
        being reported)."""
        self._buffer.clear()
        if self._upload_id is None:
            return
        with contextlib.suppress(Exception):
            self._s3.abort_multipart_upload(
                Bucket=self.location.bucket, Key=self.location.key, UploadId=self._upload_id
            )


@dataclass(frozen=True, slots=True)
class Listed:
    name: str  # the key below the location's prefix
    modified: datetime


def list_names(s3: Any, location: S3Location) -> list[Listed]:
    """The objects directly under `location` (not in deeper "folders")."""
    found: list[Listed] = []
    with errors(f"listing {location.url}", location):
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=location.bucket, Prefix=location.prefix, Delimiter="/"
        )
        for page in pages:
            for item in page.get("Contents", []):
                found.append(Listed(str(item["Key"])[len(location.prefix) :], item["LastModified"]))
    return found


def delete(s3: Any, location: S3Location) -> None:
    with errors(f"deleting {location.url}", location):
        s3.delete_object(Bucket=location.bucket, Key=location.key)


class ObjectReader:
    """An S3 object as a read-only file, streamed; failures become `S3Error`."""

    def __init__(self, s3: Any, location: S3Location) -> None:
        self.location = location
        with errors(f"reading {location.url}", location):
            self._body = s3.get_object(Bucket=location.bucket, Key=location.key)["Body"]

    def read(self, size: int = READ_SIZE) -> bytes:
        with errors(f"reading {self.location.url}", self.location):
            data: bytes = self._body.read(size if size >= 0 else None)
        return data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
