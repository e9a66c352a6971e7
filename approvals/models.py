"""SQLAlchemy models of the bot's own database. Alembic migrations in ``migrations/`` create
them; change both together."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text
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
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_operations_state", "state"),
        Index("ix_operations_created", "created_at"),
    )


class ReqState(enum.StrEnum):
    """Life of an approval request; every move is a compare-and-set in the database."""

    PENDING = "pending"
    APPROVED = "approved"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class ApprovalRequest(Base):
    """A destructive command waiting for (or past) a second person's decision."""

    __tablename__ = "approval_requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    op_id: Mapped[str] = mapped_column(String(32))
    command: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text, default="")
    args_json: Mapped[str] = mapped_column(Text, default="{}")
    plan_digest: Mapped[str] = mapped_column(String(64))
    plan_text: Mapped[str] = mapped_column(Text, default="")
    requester_id: Mapped[str] = mapped_column(String(64))
    requester_name: Mapped[str] = mapped_column(String(128), default="")
    source: Mapped[str] = mapped_column(String(16), default="slack")
    channel_id: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16))
    required: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    decided_by: Mapped[str] = mapped_column(String(256), default="")
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    card_channel: Mapped[str] = mapped_column(String(64), default="")
    card_ts: Mapped[str] = mapped_column(String(32), default="")
    outcome: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_requests_state", "state"),)


class ApprovalVote(Base):
    """One approver's approval of one request; the primary key stops double counting."""

    __tablename__ = "approval_votes"

    request_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """One link of the tamper-evident audit chain. Rows are only ever appended (``seq`` is
    last+1, never reused) and each is signed with the HMAC of its fields and the previous hash."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(128), default="")
    op_id: Mapped[str] = mapped_column(String(64), default="")
    request_id: Mapped[str] = mapped_column(String(64), default="")
    command: Mapped[str] = mapped_column(String(128), default="")
    data: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_events_actor", "actor"),
        Index("ix_audit_events_command", "command"),
        Index("ix_audit_events_at", "at"),
    )


class JobRun(Base):
    """One run of a scheduled job. The (job, due_at) key makes a run happen once even when two
    replicas both think they lead for a moment."""

    __tablename__ = "job_runs"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    due_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    runner: Mapped[str] = mapped_column(String(128), default="")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ok: Mapped[bool | None] = mapped_column(nullable=True)
    summary: Mapped[str] = mapped_column(Text, default="")
    op_id: Mapped[str] = mapped_column(String(32), default="")


class AlertState(Base):
    """Where each alert stands: ok, pending (over the threshold, not yet for long enough),
    firing, or unknown (its check could not run)."""

    __tablename__ = "alert_states"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="ok")
    since: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    value: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    notified_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    notified_state: Mapped[str] = mapped_column(String(16), default="ok")


class BackupState(enum.StrEnum):
    """Life of a database backup in the catalogue."""

    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    DELETED = "deleted"  # removed by retention (file and S3 object gone, the row kept)


class BackupKind(enum.StrEnum):
    MANUAL = "manual"
    SCHEDULED = "scheduled"
    SAFETY = "safety"  # taken by a restore just before it overwrites the database


class Backup(Base):
    """One database backup: where it is, its checksum, the row counts of every table at the
    dump's snapshot, and whether a full read of the archive succeeded."""

    __tablename__ = "backups"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default=BackupKind.MANUAL)
    state: Mapped[str] = mapped_column(String(16))
    file_name: Mapped[str] = mapped_column(String(128), default="")
    path: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    s3_bucket: Mapped[str] = mapped_column(String(128), default="")
    s3_key: Mapped[str] = mapped_column(String(256), default="")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    table_counts: Mapped[str] = mapped_column(Text, default="{}")
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    verified_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    op_id: Mapped[str] = mapped_column(String(32), default="")
    requested_by: Mapped[str] = mapped_column(String(128), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_backups_state", "state"),
        Index("ix_backups_started", "started_at"),
    )


class BackupLock(Base):
    """The one-backup-at-a-time lock: at most one row per name (the primary key makes taking
    it atomic across threads, processes and replicas); the holder refreshes ``heartbeat_at``."""

    __tablename__ = "backup_locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128), default="")
    op_id: Mapped[str] = mapped_column(String(32), default="")
    owner: Mapped[str] = mapped_column(String(128), default="")
    acquired_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MirrorRun(Base):
    """One run of ``/hq minio backup``: the uploads bucket mirrored into a folder (and maybe a
    second bucket). ``state`` is running -> succeeded (verified) | failed."""

    __tablename__ = "mirror_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    op_id: Mapped[str] = mapped_column(String(32), default="")
    requested_by: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(16))
    bucket: Mapped[str] = mapped_column(String(64), default="")
    target: Mapped[str] = mapped_column(Text, default="")
    mirror_bucket: Mapped[str] = mapped_column(String(64), default="")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    listed: Mapped[int] = mapped_column(Integer, default=0)
    copied: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_mirror_runs_started", "started_at"),)
