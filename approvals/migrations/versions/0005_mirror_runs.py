"""mirror_runs: the catalogue of MinIO (uploads bucket) mirror runs

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mirror_runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("op_id", sa.String(32), nullable=False, server_default=""),
        sa.Column("requested_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("bucket", sa.String(64), nullable=False, server_default=""),
        sa.Column("target", sa.Text(), nullable=False, server_default=""),
        sa.Column("mirror_bucket", sa.String(64), nullable=False, server_default=""),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=False, server_default="0"),
        sa.Column("listed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("copied", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("skipped", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("deleted", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("bytes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("detail", sa.Text(), nullable=False, server_default=""),
    )
    op.create_index("ix_mirror_runs_started", "mirror_runs", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_mirror_runs_started", table_name="mirror_runs")
    op.drop_table("mirror_runs")
