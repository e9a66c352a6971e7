"""Retention (commands.backup_retention.decide) with exact inputs and exact answers."""

from __future__ import annotations

import datetime as dt

import pytest

from commands.backup_retention import Candidate, decide

UTC = dt.UTC


def at(day: str, time: str = "02:00") -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{time}:00+00:00")


def test_nothing_in_nothing_out() -> None:
    decision = decide([], keep_daily=7, keep_weekly=4)
    assert decision.keep == {} and decision.delete == ()


def test_ten_nightly_backups_keep_the_newest_seven_days() -> None:
    backups = [Candidate(f"b{n:02d}", at(f"2025-01-{n:02d}"), True) for n in range(1, 11)]
    decision = decide(backups, keep_daily=7, keep_weekly=0)
    assert decision.delete == ("b03", "b02", "b01")
    assert decision.keep["b10"] == ("daily 2025-01-10", "newest verified")
    assert decision.keep["b04"] == ("daily 2025-01-04",)
    assert len(decision.keep) == 7


def test_only_the_newest_backup_of_a_day_counts_for_that_day() -> None:
    backups = [
        Candidate("morning", at("2025-01-15", "08:00"), True),
        Candidate("noon", at("2025-01-15", "12:00"), True),
        Candidate("night", at("2025-01-15", "23:59"), False),
        Candidate("yesterday", at("2025-01-14", "02:00"), True),
    ]
    decision = decide(backups, keep_daily=2, keep_weekly=0)
    assert decision.keep == {
        "night": ("daily 2025-01-15",),
        "noon": ("newest verified",),
        "yesterday": ("daily 2025-01-14",),
    }
    assert decision.delete == ("morning",)


def test_weeks_keep_the_newest_backup_of_each_iso_week() -> None:
    # one backup every 3 days from Mon 2024-12-02 to 2025-01-19 (ISO weeks 2024-W49 .. 2025-W03)
    start = at("2024-12-02")
    backups = [Candidate(f"b{n:02d}", start + dt.timedelta(days=3 * n), False) for n in range(17)]
    decision = decide(backups, keep_daily=2, keep_weekly=4)
    assert decision.keep == {
        "b16": ("daily 2025-01-19", "weekly 2025-W03"),
        "b15": ("daily 2025-01-16",),
        "b13": ("weekly 2025-W02",),  # 2025-01-10, the newest of Jan 6-12
        "b11": ("weekly 2025-W01",),  # 2025-01-04 (2024-12-30 .. 2025-01-05)
        "b09": ("weekly 2024-W52",),  # 2024-12-29
    }
    assert decision.delete == tuple(f"b{n:02d}" for n in (14, 12, 10, 8, 7, 6, 5, 4, 3, 2, 1, 0))


def test_the_newest_verified_backup_is_kept_whatever_its_age() -> None:
    backups = [Candidate(f"new{n}", at(f"2025-02-{n:02d}"), False) for n in range(1, 6)]
    backups.append(Candidate("old-verified", at("2024-06-01"), True))
    backups.append(Candidate("older-verified", at("2024-05-01"), True))
    decision = decide(backups, keep_daily=3, keep_weekly=0)
    assert decision.keep["old-verified"] == ("newest verified",)
    assert "older-verified" in decision.delete
    assert decision.delete == ("new2", "new1", "older-verified")


def test_zero_and_zero_keeps_only_the_newest_verified() -> None:
    backups = [
        Candidate("a", at("2025-01-03"), False),
        Candidate("b", at("2025-01-02"), True),
        Candidate("c", at("2025-01-01"), True),
    ]
    decision = decide(backups, keep_daily=0, keep_weekly=0)
    assert decision.keep == {"b": ("newest verified",)}
    assert decision.delete == ("a", "c")


def test_days_are_counted_where_backups_exist_not_on_the_calendar() -> None:
    backups = [
        Candidate("jan20", at("2025-01-20"), False),
        Candidate("jan10", at("2025-01-10"), False),
        Candidate("jan01", at("2025-01-01"), False),
    ]
    assert decide(backups, keep_daily=2, keep_weekly=0).delete == ("jan01",)


def test_days_are_utc_days() -> None:
    late = dt.datetime(2025, 1, 15, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    backups = [
        Candidate("late", late, False),
        Candidate("early16", at("2025-01-16", "03:00"), False),
    ]
    # 23:30 at UTC-2 is 01:30 UTC on the 16th: the same UTC day, so only the newer is daily
    decision = decide(backups, keep_daily=5, keep_weekly=0)
    assert decision.keep == {"early16": ("daily 2025-01-16",)}
    assert decision.delete == ("late",)


def test_naive_times_are_taken_as_utc_and_ties_are_broken_by_id() -> None:
    naive = dt.datetime(2025, 1, 15, 2, 0)
    backups = [Candidate("b-1", naive, False), Candidate("b-2", at("2025-01-15"), False)]
    decision = decide(backups, keep_daily=1, keep_weekly=0)
    assert decision.keep == {"b-2": ("daily 2025-01-15",)}
    assert decision.delete == ("b-1",)


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        decide([], keep_daily=-1, keep_weekly=4)
