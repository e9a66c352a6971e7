"""approval requests and votes

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("op_id", sa.String(32), nullable=False),
        sa.Column("command", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False, server_default=""),
        sa.Column("args_json", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("plan_digest", sa.String(64), nullable=False),
        sa.Column("plan_text", sa.Text(), nullable=False, server_default=""),
        sa.Column("requester_id", sa.String(64), nullable=False),
        sa.Column("requester_name", sa.String(128), nullable=False, server_default=""),
        sa.Column("source", sa.String(16), nullable=False, server_default="slack"),
        sa.Column("channel_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("required", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(256), nullable=False, server_default=""),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("card_channel", sa.String(64), nullable=False, server_default=""),
        sa.Column("card_ts", sa.String(32), nullable=False, server_default=""),
        sa.Column("outcome", sa.Text(), nullable=False, server_default=""),
    )
    op.create_index("ix_requests_state", "approval_requests", ["state"])
    op.create_table(
        "approval_votes",
        sa.Column("request_id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("approval_votes")
    op.drop_table("approval_requests")
