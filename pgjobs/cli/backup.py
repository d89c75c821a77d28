"""`pgjobs backup-restore`: put a `database-backup` file back into a database."""

from __future__ import annotations

import click

from pgjobs.cli.common import handle_errors, settings_from
from pgjobs.cli.output import echo


def register(group: click.Group) -> None:
    """Add this module's commands to `group`."""
    group.add_command(backup_restore)


@click.command("backup-restore")
@click.argument("file")
@click.option(
    "--database",
    "database_url",
    required=True,
    metavar="URL",
    help="PostgreSQL URL of the database to restore into (usually a fresh, empty one).",
)
@click.option(
    "--no-owner",
    is_flag=True,
    help="Custom-format backups: do not restore object ownership (restoring as another role).",
)
@click.option(
    "--allow-unencrypted",
    is_flag=True,
    help="Restore FILE even though it is not encrypted while JOBS_BACKUP_ENCRYPTION_KEY "
    "is set (by default only files that authenticate under the key are restored).",
)
@click.pass_context
@handle_errors
def backup_restore(
    ctx: click.Context, file: str, database_url: str, no_owner: bool, allow_unencrypted: bool
) -> None:
    """Decrypt (with JOBS_BACKUP_ENCRYPTION_KEY) and decompress FILE as a stream and
    restore it with pg_restore (custom format) or psql (plain SQL) of the server's major
    version, in one transaction: on any error the database is left as it was. psql
    meta-commands (such as \\! shell commands) in a plain SQL file are refused.

    FILE is a local path or an object in S3, s3://bucket/key (downloaded as a stream;
    needs boto3: pip install pgjobs[s3]; credentials from the AWS_* variables, endpoint
    from JOBS_BACKUP_S3_ENDPOINT or AWS_ENDPOINT_URL)."""
    # Function-level: restoring pulls in cryptography, which `pgjobs worker` never needs.
    from pgjobs.backups.restore import restore

    report = restore(
        file,
        database_url,
        settings_from(ctx),
        no_owner=no_owner,
        allow_unencrypted=allow_unencrypted,
    )
    echo(report.describe())
