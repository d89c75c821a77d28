"""`s3://` backup locations: what is accepted, what is refused and why, and the error
that names the extra to install when boto3 is missing."""

from __future__ import annotations

import sys

import pytest

from pgjobs.backups import s3
from pgjobs.backups.s3 import S3Location, parse_url
from tests.conftest import make_settings


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("s3://backups/weekly", S3Location("backups", "weekly")),
        ("s3://backups/weekly/", S3Location("backups", "weekly")),
        ("S3://backups", S3Location("backups", "")),
        ("s3://my.bucket-1/a/b_c/(x)", S3Location("my.bucket-1", "a/b_c/(x)")),
    ],
)
def test_destinations(raw: str, expected: S3Location) -> None:
    assert parse_url(raw, want_object=False) == expected


def test_objects_under_a_location_keep_local_file_names() -> None:
    location = parse_url("s3://backups/weekly", want_object=False)
    assert location.child("app-20260101T030000Z-1a2b3c4d.dump").url == (
        "s3://backups/weekly/app-20260101T030000Z-1a2b3c4d.dump"
    )
    assert S3Location("backups", "").child("a.dump").url == "s3://backups/a.dump"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("s3://", "names no bucket: use s3://bucket/prefix"),
        ("s3:///weekly", "names no bucket"),
        ("s3://Backups/x", "is not an S3 bucket name"),
        ("s3://ab/x", "is not an S3 bucket name"),
        ("s3://user:secret@backups/x", "is not an S3 bucket name"),
        ("s3://a..b/x", "is not an S3 bucket name"),
        ("s3://backups/../etc", "no empty parts, . or .."),
        ("s3://backups/a//b", "no empty parts"),
        ("s3://backups/a?versionId=1", "every part of the key must be"),
        ("s3://backups/a b", "every part of the key must be"),
        ("s3://backups/" + "k" * 1000, "the key is too long"),
        ("https://backups/x", "must start with s3://"),
    ],
)
def test_bad_destinations_say_what_is_wrong(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?").replace(".", r"\.")):
        parse_url(raw, want_object=False)


def test_an_object_url_needs_a_key() -> None:
    with pytest.raises(ValueError, match="names no object: use s3://bucket/path/file"):
        parse_url("s3://backups/", want_object=True)
    assert parse_url("s3://backups/w/a.dump", want_object=True) == S3Location("backups", "w/a.dump")


def test_without_boto3_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # what an uninstalled module looks like
    settings = make_settings("postgresql://127.0.0.1/x")
    with pytest.raises(s3.S3Unavailable, match=r"need boto3: pip install pgjobs\[s3\]"):
        s3.client(settings)
