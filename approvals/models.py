"""SQLAlchemy models of the bot's own database. Alembic migrations in ``migrations/`` create
them; change both together."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class OpState(enum.StrEnum):
    """Life of an operation (one command run, from any door)."""

    RECEIVED = "received"
    REJECTED = "rejected"  # bad input: unknown command or bad arguments
    REFUSED = "refused"  # policy said no
    DRY_RUN = "dry_run"
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset(
    {
        OpState.REJECTED,
        OpState.REFUSED,
        OpState.DRY_RUN,
        OpState.SUCCEEDED,
        OpState.FAILED,
        OpState.INTERRUPTED,
        OpState.CANCELLED,
    }
)


class Operation(Base):
    """Every command run: who, where, what (redacted), state, timings, result, error."""

    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str] = mapped_column(String(64))
    user_name: Mapped[str] = mapped_column(String(128), default="")
    channel_id: Mapped[str] = mapped_column(String(64), default="")
    command: Mapped[str] = mapped_column(String(64), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(24))
    owner: Mapped[str] = mapped_column(String(128), default="")
    request_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    result_summary: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")
    status_channel: Mapped[str] = mapped_column(String(64), default="")
    status_ts: Mapped[str] = mapped_column(String(32), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )

    __table_args__ = (
        Index("ix_operations_state", "state"),
        Index("ix_operations_created", "created_at"),
    )
