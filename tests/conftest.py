from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.settings import Settings, load_settings
from tests.pgcluster import Cluster

TEST_BOT_TOKEN = "xoxb-test-0000000000-fake"
TEST_SIGNING_SECRET = "test-signing-secret-0123456789"
TEST_APP_TOKEN = "xapp-test-0000000000-fake"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    return pg_cluster.create_database(f"hqbot_{next(_counter)}")


@pytest.fixture
def make_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "hq_database_url": f"sqlite:///{tmp_path}/hq-bot.db",
            "hq_ops_channel": "C0OPS",
            "slack_bot_token": TEST_BOT_TOKEN,
            "slack_signing_secret": TEST_SIGNING_SECRET,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def fake_slack() -> Iterator[Any]:
    from tests.fakeslack import FakeSlack

    with FakeSlack(
        token=TEST_BOT_TOKEN,
        app_token=TEST_APP_TOKEN,
        socket_mode=True,
        users={"U0ALICE": "alice", "U0BOB": "bob", "U0CAROL": "carol", "U0MALLORY": "mallory"},
    ) as fake:
        yield fake


@pytest.fixture
def slack_bot(fake_slack: Any, make_settings: Any) -> Iterator[Any]:
    from tests.harness import start_slack_bot

    harness = start_slack_bot(
        fake_slack, make_settings(slack_api_url=fake_slack.base_url, hq_approvers="U0BOB,U0CAROL")
    )
    try:
        yield harness
    finally:
        harness.close()
