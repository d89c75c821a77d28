"""Database logins made for a test: roles are cluster-wide, so each gets its own name."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from tests.conftest import ADMIN_URL


def url_as(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


@contextmanager
def login_role(*memberships: str) -> Iterator[str]:
    """A LOGIN role with no privilege but the given memberships, dropped afterwards."""
    name = f"pgjobs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        for member_of in memberships:
            admin.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), sql.Identifier(name))
            )
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
