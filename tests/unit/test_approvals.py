"""Two-person approval through signed Slack requests and the fake Slack."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from typing import Any

import pytest

from approvals.models import ReqState
from bot.slack import APPROVE_ACTION, DENY_ACTION
from commands.registry import REGISTRY
from commands.spec import CommandSpec, Plan, Result, Step

RUNS: list[str] = []
RUN_LOCK = threading.Lock()


def _execute(plan: Plan, ctx: Any, progress: Any) -> Result:
    progress("boom step 1")
    with RUN_LOCK:
        RUNS.append(str(plan.data["target"]))
    return Result(ok=True, title=f"boomed {plan.data['target']}")


def _plan(args: Any, ctx: Any) -> Plan:
    target = ctx.settings.hq_ops_channel + ":" + str(TARGET["value"])
    return Plan(
        command="boom", summary=f"boom {target}", steps=(Step("boom"),), data={"target": target}
    )


TARGET = {"value": "a"}
BOOM = CommandSpec(
    name="boom", summary="test destructive", plan=_plan, execute=_execute, destructive=True
)


@pytest.fixture
def bot(slack_bot: Any) -> Any:
    RUNS.clear()
    TARGET["value"] = "a"
    slack_bot.bot.registry = {**REGISTRY, "boom": BOOM}
    return slack_bot


def _request(bot: Any, user: str = "U0ALICE") -> str:
    status, body, _ = bot.command('boom --reason "testing"', user=user)
    assert status == 200, body
    match = re.search(r"rq-[0-9a-f]{10}", json.loads(body)["text"])
    assert match, body
    return match.group(0)


def _state(bot: Any, rid: str) -> str:
    request = bot.bot.requests.get(rid)
    assert request is not None
    return str(request.state)


def _wait_state(bot: Any, rid: str, states: set[str], timeout: float = 10) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(bot, rid)
        if state in states:
            return state
        time.sleep(0.05)
    raise AssertionError(f"{rid} stayed {_state(bot, rid)}")


def test_a_destructive_command_needs_a_reason(bot: Any) -> None:
    _, body, _ = bot.command("boom")
    assert (
        "needs a second person" in json.loads(body)["text"]
        and "--reason" in json.loads(body)["text"]
    )
    assert bot.bot.requests.pending() == []


def test_the_card_shows_the_plan_and_buttons(bot: Any) -> None:
    rid = _request(bot)
    card = bot.fake.wait_for("chat.postMessage", lambda c: "blocks" in c.params)
    text = json.dumps(card.params["blocks"])
    assert "boom C0OPS:a" in text and "testing" in text and rid in text
    actions = next(b for b in card.params["blocks"] if b["type"] == "actions")
    assert {e["action_id"] for e in actions["elements"]} == {APPROVE_ACTION, DENY_ACTION}
    assert all(e["value"] == rid for e in actions["elements"])


def test_self_approval_is_refused_and_nothing_runs(bot: Any) -> None:
    rid = _request(bot, user="U0BOB")  # an approver asking
    bot.click(APPROVE_ACTION, rid, user="U0BOB")
    eph = bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == "U0BOB")
    assert "second person" in eph.params["text"]
    assert _state(bot, rid) == ReqState.PENDING and RUNS == []


def test_a_non_approver_is_refused(bot: Any) -> None:
    rid = _request(bot)
    bot.click(APPROVE_ACTION, rid, user="U0MALLORY")
    eph = bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == "U0MALLORY")
    assert "not an approver" in eph.params["text"]
    assert _state(bot, rid) == ReqState.PENDING and RUNS == []


def test_an_approver_runs_it_once_and_the_card_shows_who(bot: Any) -> None:
    rid = _request(bot)
    status, _, elapsed = bot.click(APPROVE_ACTION, rid, user="U0BOB")
    assert status == 200 and elapsed < 1.0
    assert _wait_state(bot, rid, {"succeeded", "failed"}) == "succeeded"
    assert RUNS == ["C0OPS:a"]
    request = bot.bot.requests.get(rid)
    updates = [c for c in bot.fake.calls_to("chat.update") if c.params.get("ts") == request.card_ts]
    assert any(
        "Approved" in json.dumps(c.params) and "U0BOB" in json.dumps(c.params) for c in updates
    )
    assert not any(b["type"] == "actions" for b in updates[-1].params["blocks"])
    bot.fake.wait_for(
        "chat.postMessage",
        lambda c: c.params.get("thread_ts") == request.card_ts and "boomed" in json.dumps(c.params),
    )
    op = bot.bot.ops.get(request.op_id)
    assert op.state == "succeeded"


def test_a_double_click_runs_once(bot: Any) -> None:
    rid = _request(bot)
    threads = [
        threading.Thread(target=bot.click, args=(APPROVE_ACTION, rid, u))
        for u in ("U0BOB", "U0BOB", "U0CAROL", "U0BOB")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _wait_state(bot, rid, {"succeeded", "failed"})
    bot.bot.pool.shutdown(wait=True)
    assert RUNS == ["C0OPS:a"]


def test_a_denied_request_never_runs(bot: Any) -> None:
    rid = _request(bot)
    bot.click(DENY_ACTION, rid, user="U0CAROL")
    _wait_state(bot, rid, {"denied"})
    bot.click(APPROVE_ACTION, rid, user="U0BOB")
    eph = bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == "U0BOB")
    assert "already denied" in eph.params["text"]
    assert RUNS == []


def test_a_cancelled_request_never_runs(bot: Any) -> None:
    rid = _request(bot)
    _, body, _ = bot.command(f"cancel {rid}", user="U0BOB")
    assert "Only the requester" in json.loads(body)["text"]
    _, body, _ = bot.command(f"cancel {rid}")
    assert "Cancelled" in json.loads(body)["text"]
    bot.click(APPROVE_ACTION, rid, user="U0BOB")
    bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == "U0BOB")
    assert _state(bot, rid) == "cancelled" and RUNS == []


def test_an_expired_request_is_refused(bot: Any) -> None:
    rid = _request(bot)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=31)
    bot.bot.requests.clock = lambda: later
    bot.click(APPROVE_ACTION, rid, user="U0BOB")
    eph = bot.fake.wait_for("chat.postEphemeral", lambda c: c.params.get("user") == "U0BOB")
    assert "expired" in eph.params["text"]
    assert _state(bot, rid) == "expired" and RUNS == []


def test_a_changed_plan_runs_nothing(bot: Any) -> None:
    rid = _request(bot)
    TARGET["value"] = "b"  # e.g. `latest` now names another backup
    bot.click(APPROVE_ACTION, rid, user="U0BOB")
    assert _wait_state(bot, rid, {"succeeded", "failed"}) == "failed"
    assert RUNS == []
    assert "plan changed" in bot.bot.requests.get(rid).outcome


def test_pending_lists_open_requests(bot: Any) -> None:
    rid = _request(bot)
    _, body, _ = bot.command("pending", user="U0BOB")
    assert rid in body.decode()


def test_the_console_plays_requester_and_approver(make_settings: Any) -> None:
    import io

    from bot import console
    from bot.cards import ConsoleCards
    from bot.core import Bot

    RUNS.clear()
    bot = Bot.create(make_settings(hq_approvers="U0BOB"))
    bot.registry = {**REGISTRY, "boom": BOOM}
    out = io.StringIO()
    bot.cards = ConsoleCards(out)
    console.run(bot, "U0ALICE", io.StringIO('/hq boom --reason "x"\n'), out)
    rid = re.search(r"rq-[0-9a-f]{10}", out.getvalue()).group(0)
    script = f"/hq approve {rid}\n/as U0BOB\n/hq approve {rid}\n"
    console.run(bot, "U0ALICE", io.StringIO(script), out)
    text = out.getvalue()
    assert "You asked for this yourself" in text
    assert "boomed C0OPS:a" in text and RUNS == ["C0OPS:a"]
    bot.close()
