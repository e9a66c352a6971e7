"""The HTTP door, driven by signed requests as Slack sends them, with the fake Slack."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from slack_bolt.adapter.socket_mode import SocketModeHandler

from bot.core import Bot
from bot.slack import build_app, web_client
from commands.registry import REGISTRY
from tests.conftest import TEST_APP_TOKEN
from tests.fakeslack import post_signed, slash_command_body
from tests.harness import SECRET


def _ack_text(body: bytes) -> str:
    data = json.loads(body)
    parts = [data.get("text", "")]
    for block in data.get("blocks") or []:
        parts.append((block.get("text") or {}).get("text", ""))
    return "\n".join(parts)


def test_signed_help_is_acked_fast_and_lists_every_command(slack_bot: Any) -> None:
    status, body, elapsed = slack_bot.command("help")
    assert status == 200
    assert elapsed < 1.0, f"ack took {elapsed:.3f} s"
    text = _ack_text(body)
    for spec in REGISTRY.values():
        assert spec.usage in text, spec.name
    assert json.loads(body)["response_type"] == "ephemeral"
    [op] = slack_bot.bot.ops.recent(1)
    assert op.state == "succeeded" and op.command == "help" and op.source == "slack"


def test_a_forged_signature_gets_401_and_nothing_runs(slack_bot: Any) -> None:
    body = slash_command_body("help")
    status, _, _ = post_signed(slack_bot.url, body, "not-the-secret-at-all")
    assert status == 401
    assert slack_bot.bot.ops.recent(5) == []


def test_a_stale_timestamp_gets_401_and_nothing_runs(slack_bot: Any) -> None:
    body = slash_command_body("help")
    status, _, _ = post_signed(slack_bot.url, body, SECRET, timestamp=int(time.time()) - 6 * 60)
    assert status == 401
    assert slack_bot.bot.ops.recent(5) == []


def test_an_unknown_subcommand_gets_an_ephemeral_usage_and_is_recorded(slack_bot: Any) -> None:
    status, body, _ = slack_bot.command("backup frobnicate")
    assert status == 200
    data = json.loads(body)
    assert data["response_type"] == "ephemeral"
    assert "Unknown command" in _ack_text(body) or "needs a subcommand" in _ack_text(body)
    [op] = slack_bot.bot.ops.recent(1)
    assert op.state == "rejected" and op.text == "backup frobnicate"


def test_bad_arguments_get_the_usage_line(slack_bot: Any) -> None:
    status, body, _ = slack_bot.command("audit 9999")
    assert status == 200
    text = _ack_text(body)
    assert "1 to 200" in text and "Usage: `/hq audit [N]" in text
    assert slack_bot.bot.ops.recent(1)[0].state == "rejected"


def test_long_work_posts_status_updates_it_and_answers_in_the_thread(slack_bot: Any) -> None:
    fake = slack_bot.fake
    status, body, _ = slack_bot.command("audit verify")
    assert status == 200 and "Working on" in _ack_text(body)
    reply = fake.wait_for("chat.postMessage", lambda c: c.params.get("thread_ts"), timeout=10)
    first = fake.calls_to("chat.postMessage")[0]
    assert reply.params["thread_ts"] == first.response["ts"]
    assert "Audit trail verified" in json.dumps(reply.params)
    update = fake.wait_for("chat.update")
    assert update.params["ts"] == first.response["ts"]


def test_a_429_with_retry_after_is_waited_out_and_the_message_arrives(slack_bot: Any) -> None:
    fake = slack_bot.fake
    fake.fail_next("chat.postMessage", status=429, retry_after=1)
    slack_bot.command("audit verify")
    fake.wait_for("chat.postMessage", lambda c: c.params.get("thread_ts"), timeout=15)
    posts = fake.calls_to("chat.postMessage")
    assert posts[0].status == 429 and any(c.status == 200 for c in posts)


@contextmanager
def _socket_mode_bot(fake_slack: Any, settings: Any) -> Iterator[Bot]:
    """Run the bot's Socket Mode door against ``fake_slack``; yield the bot once connected."""
    bot = Bot.create(settings)
    app = build_app(bot, web_client(settings), None)
    handler = SocketModeHandler(app, TEST_APP_TOKEN)
    handler.connect()
    try:
        fake_slack.socket_mode.wait_connected(timeout=10)
        yield bot
    finally:
        handler.close()
        bot.close()


def test_socket_mode_acks_the_envelope_and_replies(fake_slack: Any, make_settings: Any) -> None:
    settings = make_settings(slack_api_url=fake_slack.base_url, slack_app_token=TEST_APP_TOKEN)
    with _socket_mode_bot(fake_slack, settings) as bot:
        sm = fake_slack.socket_mode
        envelope = sm.send_slash_command("help")
        ack = sm.wait_ack(envelope, timeout=10)
        assert "/hq help [CMD]" in json.dumps(ack.get("payload", {}))
        envelope = sm.send_slash_command("audit verify")
        sm.wait_ack(envelope, timeout=10)
        fake_slack.wait_for("chat.postMessage", lambda c: c.params.get("thread_ts"), timeout=10)
        assert bot.ops.recent(1)[0].state == "succeeded"


def test_app_home_shows_health_pending_approvals_and_backups(
    fake_slack: Any, make_settings: Any
) -> None:
    settings = make_settings(
        slack_api_url=fake_slack.base_url, slack_app_token=TEST_APP_TOKEN, hq_health_timeout=0.5
    )
    with _socket_mode_bot(fake_slack, settings):
        fake_slack.socket_mode.send_event(
            {"type": "app_home_opened", "user": "U0ALICE", "tab": "home"}
        )
        call = fake_slack.wait_for("views.publish", timeout=15)
        assert call.params["user_id"] == "U0ALICE"
        text = json.dumps(call.params["view"])
        assert call.params["view"]["type"] == "home"
        for part in ("Harmoniq", "Pending approvals", "Last backups"):
            assert part in text
