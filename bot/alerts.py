"""Threshold alerts on the guide's Key Metrics that do not flap.

A condition must hold for ``hold`` before it fires; it clears only below a lower threshold
(``clear``) than it fires at; it is posted once when it fires and once when it clears, and again
only after ``repeat``. A reading that could not be taken is its own state, ``unknown``, never
``ok``. :func:`step` is the pure state machine; :class:`Alerts` stores states and posts.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from approvals.models import AlertState, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """Fire when the value is above ``fire`` (or below, for ``below=True``, e.g. days left on a
    certificate) for ``hold``; clear when it is back past ``clear``."""

    name: str
    fire: float
    clear: float
    hold: dt.timedelta
    repeat: dt.timedelta
    unit: str = "%"
    below: bool = False

    def over(self, value: float) -> bool:
        return value < self.fire if self.below else value > self.fire

    def cleared(self, value: float) -> bool:
        return value > self.clear if self.below else value < self.clear


@dataclass(frozen=True)
class Reading:
    """One value of one alert's metric; ``value`` None means the check could not run."""

    name: str
    value: float | None
    detail: str = ""


@dataclass(frozen=True)
class State:
    state: str = "ok"  # ok | pending | firing | unknown
    since: dt.datetime | None = None
    notified_state: str = "ok"
    notified_at: dt.datetime | None = None


@dataclass(frozen=True)
class Notice:
    """A message to post: ``kind`` is fire, repeat, clear, unknown or known."""

    kind: str
    rule: Rule
    reading: Reading


def step(
    rule: Rule, state: State, reading: Reading, now: dt.datetime
) -> tuple[State, Notice | None]:
    """Given a rule, the stored state, a new reading and the time, return the new state and
    the notice to post (or None)."""
    if reading.value is None:
        new = state if state.state == "unknown" else replace(state, state="unknown", since=now)
        if new.notified_state != "unknown":
            return replace(new, notified_state="unknown", notified_at=now), Notice(
                "unknown", rule, reading
            )
        return new, None
    if state.state == "unknown":
        # The check works again: say so, then judge the value afresh (a condition must hold
        # again before it fires again).
        new, notice = _judge(rule, State(), reading.value, now)
        if notice is None:
            new = replace(new, notified_state="ok", notified_at=now)
            notice = Notice("known", rule, reading)
        return new, notice
    return _judge(rule, state, reading.value, now, reading)


def _judge(
    rule: Rule, state: State, value: float, now: dt.datetime, reading: Reading | None = None
) -> tuple[State, Notice | None]:
    reading = reading or Reading(rule.name, value)
    if state.state in ("ok", "pending"):
        if not rule.over(value):
            return State(
                "ok",
                state.since if state.state == "ok" else now,
                state.notified_state,
                state.notified_at,
            ), None
        since = state.since if state.state == "pending" and state.since else now
        if now - since >= rule.hold:
            return State("firing", now, "firing", now), Notice("fire", rule, reading)
        return State("pending", since, state.notified_state, state.notified_at), None
    # firing
    if rule.cleared(value):
        return State("ok", now, "ok", now), Notice("clear", rule, reading)
    if state.notified_at is None or now - state.notified_at >= rule.repeat:
        return replace(state, notified_at=now), Notice("repeat", rule, reading)
    return state, None


def describe(notice: Notice) -> str:
    """Given a notice, return its message for the ops channel."""
    rule, reading = notice.rule, notice.reading
    shown = "?" if reading.value is None else f"{reading.value:.1f}{rule.unit}"
    side = "under" if rule.below else "above"
    back = "over" if rule.below else "under"
    texts = {
        "fire": f":rotating_light: *{rule.name}* is {shown}, {side} {rule.fire:g}{rule.unit} "
        f"for {rule.hold.total_seconds() / 60:g} min.",
        "repeat": f":rotating_light: still: *{rule.name}* is {shown} ({side} "
        f"{rule.fire:g}{rule.unit}).",
        "clear": f":white_check_mark: *{rule.name}* recovered: {shown}, {back} "
        f"{rule.clear:g}{rule.unit}.",
        "unknown": f":grey_question: *{rule.name}* cannot be checked: {reading.detail}",
        "known": f":white_check_mark: *{rule.name}* can be checked again: {shown}.",
    }
    text = texts[notice.kind]
    if reading.detail and notice.kind != "unknown":
        text += f" ({reading.detail})"
    return text


def rules_from_settings(settings: Any) -> dict[str, Rule]:
    """Given settings, return the Key Metrics rules by name."""
    hold = dt.timedelta(seconds=settings.hq_alert_hold_seconds)
    repeat = dt.timedelta(minutes=settings.hq_alert_repeat_minutes)
    margin = settings.hq_alert_clear_margin

    def pct(name: str, fire: float) -> Rule:
        return Rule(name, fire, max(fire - margin, 0.0), hold, repeat)

    rules = {
        "Redis memory": pct("Redis memory", settings.hq_alert_redis_memory_percent),
        "PostgreSQL connections": pct(
            "PostgreSQL connections", settings.hq_alert_pg_connections_percent
        ),
        "disk docker root": pct("disk docker root", settings.hq_alert_disk_percent),
        "disk backups": pct("disk backups", settings.hq_alert_disk_percent),
    }
    days = float(settings.hq_tls_warn_days)
    for endpoint in settings.hq_tls_endpoints:
        name = f"TLS {endpoint}"
        rules[name] = Rule(
            name, days, days + 1, dt.timedelta(0), dt.timedelta(days=1), unit=" days", below=True
        )
    return rules


def _disk_percent(path: Path) -> float:
    usage = shutil.disk_usage(path)
    return 100.0 * usage.used / usage.total


def read_metrics(infra: Any, settings: Any, names: Iterable[str]) -> list[Reading]:
    """Given the infra clients, read each named metric; a failure is an unknown reading."""
    readers: dict[str, Callable[[], tuple[float, str]]] = {}

    def redis_memory() -> tuple[float, str]:
        memory = infra.redis.memory()
        if memory.percent is None:
            return 0.0, "maxmemory 0: no limit"
        return float(memory.percent), f"{memory.used_human} of maxmemory {memory.maxmemory}"

    def pg_connections() -> tuple[float, str]:
        usage = infra.postgres.connection_usage()
        return float(usage.percent), f"{usage.clients} of {usage.usable} usable"

    def disk(path: Path) -> Callable[[], tuple[float, str]]:
        return lambda: (_disk_percent(path), str(path))

    def tls(endpoint: str) -> Callable[[], tuple[float, str]]:
        def read() -> tuple[float, str]:
            not_after = infra.certificate(endpoint).not_after
            left = (not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400
            return left, f"expires {not_after:%Y-%m-%d}"

        return read

    readers["Redis memory"] = redis_memory
    readers["PostgreSQL connections"] = pg_connections
    readers["disk docker root"] = disk(Path(settings.hq_docker_root))
    readers["disk backups"] = disk(Path(settings.hq_backup_dir))
    for endpoint in settings.hq_tls_endpoints:
        readers[f"TLS {endpoint}"] = tls(endpoint)
    readings = []
    for name in names:
        reader = readers.get(name)
        if reader is None:
            continue
        try:
            value, detail = reader()
            readings.append(Reading(name, value, detail))
        except Exception as exc:
            message = getattr(exc, "message", None) or type(exc).__name__
            readings.append(Reading(name, None, str(message)[:300]))
    return readings


class Alerts:
    """Stored alert states: evaluate readings, persist, and return what to post."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        rules: dict[str, Rule],
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.rules = rules
        self.clock = clock

    def states(self) -> dict[str, AlertState]:
        with self.sessions() as session:
            return {row.name: row for row in session.scalars(select(AlertState))}

    def evaluate(self, readings: Iterable[Reading]) -> list[Notice]:
        """Given readings, update the stored states and return the notices to post."""
        now = self.clock()
        notices = []
        with self.sessions.begin() as session:
            for reading in readings:
                rule = self.rules.get(reading.name)
                if rule is None:
                    continue
                row = session.get(AlertState, reading.name)
                state = State()
                if row is not None:
                    state = State(
                        row.state, _aware(row.since), row.notified_state, _aware(row.notified_at)
                    )
                new, notice = step(rule, state, reading, now)
                if row is None:
                    row = AlertState(name=reading.name)
                    session.add(row)
                row.state = new.state
                row.since = new.since or now
                row.notified_state = new.notified_state
                row.notified_at = new.notified_at
                row.value = "" if reading.value is None else f"{reading.value:.2f}"
                row.detail = reading.detail[:500]
                if notice is not None:
                    notices.append(notice)
        return notices


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value
