"""Cron expressions for the scheduler: the usual five fields, or six with seconds first."""

from __future__ import annotations

from apscheduler.triggers.cron import CronTrigger

FIELDS5 = ("minute", "hour", "day", "month", "day_of_week")
FIELDS6 = ("second", *FIELDS5)


def trigger(expression: str, timezone: str = "UTC") -> CronTrigger:
    """Given ``m h dom mon dow`` (or ``s m h dom mon dow``), return an APScheduler trigger.
    Raise ValueError with a sentence when the expression is wrong."""
    parts = expression.split()
    if len(parts) not in (5, 6):
        raise ValueError(
            f"{expression!r}: expected 5 cron fields (m h dom mon dow) or 6 (with seconds first)"
        )
    names = FIELDS5 if len(parts) == 5 else FIELDS6
    values = dict(zip(names, parts, strict=True))
    # cron counts Sunday as 0; APScheduler's day_of_week counts Monday as 0: use names.
    dow = values["day_of_week"]
    if dow not in ("*", "?"):
        days = {
            "0": "sun",
            "7": "sun",
            "1": "mon",
            "2": "tue",
            "3": "wed",
            "4": "thu",
            "5": "fri",
            "6": "sat",
        }
        values["day_of_week"] = ",".join(days.get(d, d) for d in dow.split(","))
    try:
        return CronTrigger(timezone=timezone, **values)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{expression!r}: {exc}") from None
