"""Which backups to keep: the newest of each of the last N days that have a backup, the newest
of each of the last M ISO weeks that have one, and always the newest verified backup.

Pure: it takes what the catalogue says and returns a decision; ``/hq backup prune`` and the
scheduler (after each scheduled backup) act on it. Days and weeks are counted in UTC and only
where a backup exists (as ``borg prune`` does): with ``keep_daily=7`` a gap of three quiet days
does not cost three backups.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A complete backup as retention sees it."""

    id: str
    started_at: dt.datetime
    verified: bool


@dataclass(frozen=True)
class Decision:
    """``keep`` maps a kept backup to why (``daily 2025-01-15``, ``weekly 2025-W03``,
    ``newest verified``); ``delete`` lists the others, newest first."""

    keep: Mapping[str, tuple[str, ...]]
    delete: tuple[str, ...]


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def decide(backups: Sequence[Candidate], *, keep_daily: int, keep_weekly: int) -> Decision:
    """Given complete backups, return which to keep and which to delete. Raise ValueError on a
    negative count."""
    if keep_daily < 0 or keep_weekly < 0:
        raise ValueError("keep_daily and keep_weekly must be 0 or more")
    ordered = sorted(backups, key=lambda b: (_utc(b.started_at), b.id), reverse=True)
    reasons: dict[str, list[str]] = {b.id: [] for b in ordered}
    days: set[dt.date] = set()
    weeks: set[tuple[int, int]] = set()
    for backup in ordered:
        when = _utc(backup.started_at)
        day = when.date()
        if day not in days:
            days.add(day)
            if len(days) <= keep_daily:
                reasons[backup.id].append(f"daily {day.isoformat()}")
        iso = when.isocalendar()
        week = (iso.year, iso.week)
        if week not in weeks:
            weeks.add(week)
            if len(weeks) <= keep_weekly:
                reasons[backup.id].append(f"weekly {iso.year}-W{iso.week:02d}")
    newest_verified = next((b for b in ordered if b.verified), None)
    if newest_verified is not None:
        reasons[newest_verified.id].append("newest verified")
    keep = {b.id: tuple(reasons[b.id]) for b in ordered if reasons[b.id]}
    delete = tuple(b.id for b in ordered if not reasons[b.id])
    return Decision(keep=keep, delete=delete)
