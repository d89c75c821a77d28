"""`pgjobs init`: check the services, then create or upgrade the schema."""

from __future__ import annotations

from dataclasses import dataclass, field

from pgjobs.config import Settings
from pgjobs.db import VIEWS, InstallReport, connect_sync, install_schema, missing_relations
from pgjobs.errors import ServiceUnavailable
from pgjobs.signals.redis_client import sync_client
from pgjobs.sql_api import record_settings


@dataclass
class InitReport:
    """What `pgjobs init` (and App.install) did: the lines it prints, and the schema
    versions before and after (`schema.changed`, `schema.applied`)."""

    ok: bool = True
    messages: list[str] = field(default_factory=list)
    schema: InstallReport | None = None

    def lines(self) -> list[str]:
        return self.messages


def redis_status(url: str | None) -> str:
    """'ok', 'disabled' or 'down: <reason>' — Redis is optional, so never raises."""
    if not url:
        return "disabled"
    try:
        client = sync_client(url, timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # a server that answers nonsense fails redis-py in odd ways
        return f"down: {exc or type(exc).__name__}"
    return "ok"


def initialise(settings: Settings) -> InitReport:
    """Create or upgrade everything; raises ServiceUnavailable when PostgreSQL is down."""
    url = settings.require_database_url()
    with connect_sync(url, "init", pooled=settings.transaction_pooling) as conn:
        result = install_schema(conn)
        missing = missing_relations(conn)
        record_settings(conn, settings)
    report = InitReport(schema=result)
    report.messages.append(f"postgres: ok (PostgreSQL {result.server_version})")
    if result.changed and result.version_before == 0:
        report.messages.append(f"schema: created (version {result.version_after})")
    elif result.changed:
        names = ", ".join(f"{m.version} {m.name}" for m in result.applied)
        report.messages.append(
            f"schema: upgraded from version {result.version_before} to "
            f"{result.version_after} (applied: {names})"
        )
    else:
        report.messages.append(f"schema: up to date (version {result.version_after})")
    report.messages.append(f"views: {len(VIEWS)} refreshed")
    report.messages.append("queues: default, high-priority, low-priority")
    if missing:
        raise ServiceUnavailable(f"schema is incomplete after init: missing {', '.join(missing)}")
    # Redis is optional: an outage is a warning (limits, wake-ups and events use
    # PostgreSQL meanwhile), never a failed init.
    redis = redis_status(settings.redis_url)
    if redis.startswith("down"):
        redis += (
            " (warning: pgjobs runs on PostgreSQL alone until Redis is back; check JOBS_REDIS_URL)"
        )
    report.messages.append(f"redis: {redis}")
    return report
