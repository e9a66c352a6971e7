"""Issue 4 end to end: real `hq-bot serve --http` processes, the sandbox's Redis, a shared
PostgreSQL database for the bot, signed Slack requests and the fake Slack."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bot.slack import APPROVE_ACTION
from tests.conftest import TEST_BOT_TOKEN, TEST_SIGNING_SECRET
from tests.fakeslack import FakeSlack, block_actions_body, post_signed, slash_command_body
from tests.integration.botproc import Server, bot_env
from tests.pgcluster import Cluster


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    users = {"U0ALICE": "alice", "U0BOB": "bob"}
    with FakeSlack(token=TEST_BOT_TOKEN, users=users) as fake:
        yield fake


@pytest.fixture
def env(fake: FakeSlack, pg_url: str, sandbox: None) -> dict[str, str]:
    return bot_env(fake.base_url, pg_url, HQ_APPROVERS="U0BOB")


def _sandbox_redis() -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=56379, db=0)


def _flushdb_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_flushdb", {}).get("calls", 0))


def _request(server: Server, fake: FakeSlack) -> str:
    body = slash_command_body(
        'redis flushdb --reason "forced logout"',
        user_id="U0ALICE",
        response_url=fake.response_url("alice"),
    )
    status, reply, _ = post_signed(server.url, body, TEST_SIGNING_SECRET)
    assert status == 200, reply
    match = re.search(r"rq-[0-9a-f]{10}", reply.decode())
    assert match, reply
    return match.group(0)


def test_the_same_click_on_two_replicas_flushes_once(
    env: dict[str, str], fake: FakeSlack, tmp_path: Path
) -> None:
    client = _sandbox_redis()
    client.set("session:alice", "1")
    a = Server(env, tmp_path, "a")
    b = Server(env, tmp_path, "b")
    try:
        rid = _request(a, fake)
        before = _flushdb_calls(client)
        body = block_actions_body(
            APPROVE_ACTION,
            rid,
            user_id="U0BOB",
            user_name="bob",
            response_url=fake.response_url("bob"),
        )
        results: list[int] = []

        def deliver(server: Server) -> None:
            status, _, _ = post_signed(server.url, body, TEST_SIGNING_SECRET)
            results.append(status)

        threads = [threading.Thread(target=deliver, args=(s,)) for s in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200, 200, 200, 200]
        fake.wait_for(
            "chat.postMessage", lambda c: "FLUSHDB done" in json.dumps(c.params), timeout=30
        )
        time.sleep(1.5)  # give a wrong second execution time to happen
        assert _flushdb_calls(client) - before == 1
        assert client.dbsize() == 0
    finally:
        a.stop()
        b.stop()


def test_with_the_database_unreachable_a_destructive_command_is_refused(
    env: dict[str, str], fake: FakeSlack, tmp_path: Path
) -> None:
    cluster = Cluster()  # a database of its own, to take away under the running bot
    cluster.start()
    env = {**env, "HQ_DATABASE_URL": cluster.create_database("doomed")}
    server = Server(env, tmp_path, "solo")
    client = _sandbox_redis()
    try:
        rid = _request(server, fake)
        before = _flushdb_calls(client)
        cluster.stop()
        body = slash_command_body('redis flushdb --reason "x"', user_id="U0ALICE")
        status, reply, elapsed = post_signed(server.url, body, TEST_SIGNING_SECRET)
        assert status == 200 and elapsed < 3
        text = json.loads(reply)["text"]
        assert "cannot write to its database" in text and "nothing was run" in text, text
        click = block_actions_body(APPROVE_ACTION, rid, user_id="U0BOB", user_name="bob")
        assert post_signed(server.url, click, TEST_SIGNING_SECRET).status == 200
        eph = fake.wait_for(
            "chat.postEphemeral", lambda c: c.params.get("user") == "U0BOB", timeout=15
        )
        assert "nothing was run" in eph.params["text"]
        assert _flushdb_calls(client) == before
    finally:
        server.stop()
        cluster.stop()


def test_work_of_a_killed_bot_is_marked_interrupted_and_announced(
    env: dict[str, str], fake: FakeSlack, tmp_path: Path
) -> None:
    from sqlalchemy import create_engine, text

    # A backend that accepts connections and never answers keeps `/hq health` running.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    env = {
        **env,
        "HQ_BACKEND_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
        "HQ_HEALTH_TIMEOUT": "60",
    }
    first = Server(env, tmp_path, "first")
    engine = create_engine(env["HQ_DATABASE_URL"])
    try:
        body = slash_command_body("health", user_id="U0ALICE")
        assert post_signed(first.url, body, TEST_SIGNING_SECRET).status == 200
        deadline = time.monotonic() + 20
        op_id = None
        while op_id is None and time.monotonic() < deadline:
            with engine.connect() as conn:
                op_id = conn.execute(
                    text("SELECT id FROM operations WHERE command = 'health' AND state = 'running'")
                ).scalar()
            time.sleep(0.2)
        assert op_id, first.log_text()
        first.proc.kill()  # no goodbye: SIGKILL in the middle of the operation
        first.proc.wait(10)
        second = Server(env, tmp_path, "second")
        try:
            note = fake.wait_for(
                "chat.postMessage",
                lambda c: (
                    c.params.get("channel") == "C0OPS" and "interrupted" in c.params.get("text", "")
                ),
                timeout=15,
            )
            assert op_id in note.params["text"]
            with engine.connect() as conn:
                state = conn.execute(
                    text("SELECT state FROM operations WHERE id = :id"), {"id": op_id}
                ).scalar()
            assert state == "interrupted"
        finally:
            second.stop()
    finally:
        first.stop()
        engine.dispose()
        silent.close()
