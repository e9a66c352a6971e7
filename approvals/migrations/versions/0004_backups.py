"""backups: the catalogue of database backups, and the lock that allows one at a time

Revision ID: 0004
Revises: 0003

``backups`` has one row per backup attempt (``state`` running -> complete | failed, and
``deleted`` once retention removed it). ``backup_locks`` holds at most one row per lock name; the
primary key makes taking it atomic across threads, processes and replicas sharing the database.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backups",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False, server_default="manual"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("file_name", sa.String(128), nullable=False, server_default=""),
        sa.Column("path", sa.Text(), nullable=False, server_default=""),
        sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("sha256", sa.String(64), nullable=False, server_default=""),
        sa.Column("encrypted", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("s3_bucket", sa.String(128), nullable=False, server_default=""),
        sa.Column("s3_key", sa.String(256), nullable=False, server_default=""),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=False, server_default="0"),
        sa.Column("table_counts", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("op_id", sa.String(32), nullable=False, server_default=""),
        sa.Column("requested_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("error", sa.Text(), nullable=False, server_default=""),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_backups_state", "backups", ["state"])
    op.create_index("ix_backups_started", "backups", ["started_at"])
    op.create_table(
        "backup_locks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False, server_default=""),
        sa.Column("op_id", sa.String(32), nullable=False, server_default=""),
        sa.Column("owner", sa.String(128), nullable=False, server_default=""),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("backup_locks")
    op.drop_index("ix_backups_started", table_name="backups")
    op.drop_index("ix_backups_state", table_name="backups")
    op.drop_table("backups")
