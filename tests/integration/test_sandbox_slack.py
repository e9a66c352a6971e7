"""The read-only runbook commands through signed Slack requests against the sandbox."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from commands.infra import Infra
from commands.infra.http import Http
from tests.conftest import TEST_BOT_TOKEN
from tests.fakeslack import FakeSlack
from tests.harness import SlackBot, start_slack_bot


@pytest.fixture
def slack(sandbox_settings: Any) -> Iterator[SlackBot]:
    with FakeSlack(token=TEST_BOT_TOKEN, users={"U0ALICE": "alice"}) as fake:
        settings = sandbox_settings(
            slack_bot_token=TEST_BOT_TOKEN, slack_api_url=fake.base_url, hq_ops_channel="C0OPS"
        )
        harness = start_slack_bot(fake, settings, infra=Infra(settings))
        try:
            yield harness
        finally:
            harness.close()


def _result(slack: SlackBot, needle: str) -> dict[str, Any]:
    call = slack.fake.wait_for(
        "chat.postMessage",
        lambda c: bool(c.params.get("thread_ts")) and needle in json.dumps(c.params),
        timeout=60,
    )
    return call.params


def test_health_over_slack_posts_a_block_kit_summary(slack: SlackBot) -> None:
    status, _, elapsed = slack.command("health")
    assert status == 200 and elapsed < 1.0
    params = _result(slack, "postgres")
    text = json.dumps(params["blocks"])
    for check in ("backend", "redis", "minio", "disk"):
        assert check in text
    status_message = slack.fake.calls_to("chat.postMessage")[0]
    assert params["thread_ts"] == status_message.response["ts"]


def test_long_logs_over_slack_are_uploaded_as_a_file(slack: SlackBot) -> None:
    marker = f"hq-slack-{uuid.uuid4().hex[:8]}"
    http = Http()
    for number in range(60):
        http.get(f"{slack.settings.hq_backend_url}/{marker}-{number}", timeout=5)
    slack.command(f"logs backend --tail 1000 --grep {marker}")
    done = slack.fake.wait_for("files.completeUploadExternal", timeout=60)
    content = b"".join(done.uploads.values()).decode()
    assert f"{marker}-59" in content and done.params["thread_ts"]


def test_ps_and_redis_memory_over_slack(slack: SlackBot) -> None:
    slack.command("ps")
    _result(slack, "postgres")
    slack.command("redis memory")
    _result(slack, "maxmemory")


def test_an_unknown_service_is_refused_naming_the_valid_ones(slack: SlackBot) -> None:
    # The service list comes from compose (I/O), so the check runs on the worker: the answer
    # is the command's result in the thread, and nothing is restarted.
    status, _, _ = slack.command("restart nosuch")
    assert status == 200
    params = _result(slack, "nosuch")
    text = json.dumps(params)
    assert "backend" in text and "postgres" in text
    assert slack.bot.ops.recent(1)[0].state == "failed"
