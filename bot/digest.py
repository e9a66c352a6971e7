"""The daily health digest: overall verdict, every health check, the last database backup and
MinIO mirror, pending approvals, the alerts of the last 24 hours, and a chart of backup size and
duration over the last 30 days."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from approvals.models import AuditEvent, Backup, MirrorRun, utcnow
from commands.spec import Attachment, Result, Row, Status

log = logging.getLogger(__name__)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def age(value: dt.datetime, now: dt.datetime) -> str:
    """Given a time and now, return a short age like '5 h' or '3 d'."""
    seconds = (now - _aware(value)).total_seconds()
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def backup_history(bot: Any, days: int = 30) -> list[Backup]:
    since = utcnow() - dt.timedelta(days=days)
    with bot.sessions() as session:
        return list(
            session.scalars(
                select(Backup)
                .where(Backup.state == "complete", Backup.started_at >= since)
                .order_by(Backup.started_at)
            )
        )


def backup_row(bot: Any, now: dt.datetime) -> Row:
    with bot.sessions() as session:
        last = session.scalars(
            select(Backup)
            .where(Backup.state == "complete", Backup.deleted_at.is_(None))
            .order_by(Backup.started_at.desc())
            .limit(1)
        ).first()
    if last is None:
        return Row("last database backup", Status.WARN, "none yet")
    old = (now - _aware(last.started_at)) > dt.timedelta(hours=26)
    status = Status.WARN if old or not last.verified else Status.OK
    verified = "verified" if last.verified else "NOT verified"
    return Row(
        "last database backup",
        status,
        f"{last.id}, {age(last.started_at, now)} ago, {human(last.size)}, {verified}",
    )


def mirror_row(bot: Any, now: dt.datetime) -> Row:
    with bot.sessions() as session:
        last = session.scalars(
            select(MirrorRun).order_by(MirrorRun.started_at.desc()).limit(1)
        ).first()
    if last is None:
        return Row("last MinIO mirror", Status.WARN, "none yet")
    ok = last.state in ("complete", "succeeded") and bool(last.verified)
    return Row(
        "last MinIO mirror",
        Status.OK if ok else Status.WARN,
        f"{age(last.started_at, now)} ago: {last.copied} copied, {last.skipped} skipped, "
        f"{last.failed} failed, {'verified' if last.verified else 'not verified'}",
    )


def alert_lines(bot: Any, now: dt.datetime) -> list[str]:
    since = now - dt.timedelta(hours=24)
    with bot.sessions() as session:
        events = list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.kind.like("alert.%"), AuditEvent.at >= since)
                .order_by(AuditEvent.seq)
            )
        )
    lines = []
    for event in events:
        data = json.loads(event.data or "{}")
        lines.append(
            f"{_aware(event.at):%H:%M} {event.kind.removeprefix('alert.')}: "
            f"{data.get('alert', '?')} ({data.get('value', '?')})"
        )
    return lines


def chart(history: Sequence[Backup]) -> bytes | None:
    """Given the last 30 days of backups, return a PNG of size and duration, or None when
    there is no history."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.dates import date2num

    when = [float(date2num(_aware(b.started_at))) for b in history]  # type: ignore[no-untyped-call]
    sizes = [b.size / 1024 / 1024 for b in history]
    durations = [b.duration_s for b in history]
    fig, left = plt.subplots(figsize=(6, 2.6), dpi=100)
    left.plot(when, sizes, marker="o", color="#1f77b4")
    left.set_ylabel("size (MB)", color="#1f77b4")
    right = left.twinx()
    right.plot(when, durations, marker="s", color="#d62728")
    right.set_ylabel("duration (s)", color="#d62728")
    left.xaxis_date()
    left.set_title("Database backups, last 30 days")
    fig.autofmt_xdate()
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def build_digest(bot: Any) -> Result:
    """Run the health checks and gather the day's facts into one result."""
    from commands.spec import Actor

    now = utcnow()
    actor = Actor("scheduler", "scheduler", bot.settings.hq_ops_channel, "scheduler")
    health_spec = bot.registry.get("health")
    rows: list[Row] = []
    verdict = Status.UNKNOWN
    if health_spec is not None:
        ctx = bot.context(actor, "digest")
        health = bot._execute(health_spec, health_spec.plan({}, ctx), ctx, lambda _l: None)
        rows.extend(health.rows)
        verdict = Status(health.data.get("verdict", "ok" if health.ok else "fail"))
    rows.append(backup_row(bot, now))
    rows.append(mirror_row(bot, now))
    pending = bot.requests.pending()
    rows.append(
        Row(
            "pending approvals",
            Status.WARN if pending else Status.OK,
            ", ".join(f"{r.id} `{r.command}`" for r in pending) or "none",
        )
    )
    alerts = alert_lines(bot, now)
    text = "*Alerts, last 24 h*\n" + ("\n".join(alerts) if alerts else "none")
    png = chart(backup_history(bot))
    attachments = (Attachment("backups-30d.png", png, "Backups, last 30 days"),) if png else ()
    words = {
        Status.OK: "all healthy",
        Status.WARN: "warnings",
        Status.FAIL: "FAILING",
        Status.UNKNOWN: "unknown",
    }
    return Result(
        ok=verdict != Status.FAIL,
        title=f"Harmoniq digest {now:%Y-%m-%d}: {words[verdict]}",
        text=text,
        rows=tuple(rows),
        attachments=attachments,
        data={"verdict": verdict.value},
    )
