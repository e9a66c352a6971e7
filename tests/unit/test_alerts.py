from __future__ import annotations

import datetime as dt

from bot.alerts import Reading, Rule, State, describe, step

T0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
RULE = Rule(
    "Redis memory", fire=80, clear=75, hold=dt.timedelta(minutes=5), repeat=dt.timedelta(hours=1)
)


def _run(values: list[float | None], every: dt.timedelta = dt.timedelta(minutes=1)):
    state, notices = State(), []
    for i, value in enumerate(values):
        state, notice = step(RULE, state, Reading("Redis memory", value, "d"), T0 + i * every)
        notices.append(notice.kind if notice else None)
    return state, notices


def test_a_condition_fires_once_after_the_hold_time() -> None:
    state, notices = _run([85, 85, 85, 85, 85, 85, 85, 85])
    assert notices == [None, None, None, None, None, "fire", None, None]
    assert state.state == "firing"


def test_a_blip_shorter_than_the_hold_never_fires() -> None:
    _, notices = _run([85, 85, 60, 85, 85, 60])
    assert all(n is None for n in notices)


def test_it_clears_only_under_the_lower_threshold() -> None:
    _, notices = _run([90] * 6 + [79, 78, 76, 74, 74])
    assert notices.count("fire") == 1
    assert notices[6:] == [None, None, None, "clear", None]


def test_a_firing_alert_repeats_only_after_the_interval() -> None:
    _, notices = _run([90] * 70)
    assert notices.count("fire") == 1 and notices.count("repeat") == 1
    assert notices.index("repeat") == 5 + 60


def test_a_check_that_cannot_run_is_unknown_not_ok() -> None:
    state, notices = _run([None, None, 50])
    assert notices == ["unknown", None, "known"]
    assert state.state == "ok"
    state, _ = _run([None])
    assert state.state == "unknown"


def test_back_from_unknown_is_said_once_and_must_hold_again_to_fire() -> None:
    _, notices = _run([90] * 6 + [None, None, 90, 90, 90, 90, 90, 90])
    assert notices[:6].count("fire") == 1
    assert notices[6:9] == ["unknown", None, "known"]
    assert notices[9:] == [None, None, None, None, "fire"]


def test_below_rules_fire_under_their_threshold() -> None:
    rule = Rule(
        "TLS x",
        fire=14,
        clear=15,
        hold=dt.timedelta(0),
        repeat=dt.timedelta(days=1),
        unit=" days",
        below=True,
    )
    state, notice = step(rule, State(), Reading("TLS x", 5.0), T0)
    assert notice is not None and notice.kind == "fire" and "under 14" in describe(notice)
    state, notice = step(rule, state, Reading("TLS x", 90.0), T0 + dt.timedelta(days=1))
    assert notice is not None and notice.kind == "clear"
