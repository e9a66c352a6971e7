"""The fake Slack harness itself, checked against the real slack_sdk / slack_bolt clients."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from slack_bolt import Ack, App, Respond
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from tests.fakeslack import (
    DEFAULT_RESPONSE_URL,
    FakeSlack,
    FakeSocketMode,
    SlackApiFault,
    block_actions_body,
    post_signed,
    sign,
    slash_command_body,
)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def _non_daemon_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()}


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = _non_daemon_threads()
    yield
    deadline = time.monotonic() + 3.0
    leaked = _non_daemon_threads() - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = {t for t in leaked if t.is_alive()}
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack(groups={"S1": ["U1", "U2"]}) as server:
        yield server


def _client(fake: FakeSlack, **kwargs: Any) -> WebClient:
    return WebClient(token=fake.token, base_url=fake.base_url, **kwargs)


# ---------------------------------------------------------------------- Web API


def test_records_json_and_form_calls_with_blocks_decoded(fake: FakeSlack) -> None:
    client = _client(fake)
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]

    first = client.chat_postMessage(channel="C1", text="hello", blocks=blocks)  # JSON body
    # The same method form-encoded, blocks as a JSON string (as other callers send it).
    second = client.api_call(
        "chat.postMessage", data={"channel": "C1", "text": "again", "blocks": json.dumps(blocks)}
    )

    assert first["ok"] and first["channel"] == "C1"
    assert first["message"]["text"] == "hello"
    assert first["ts"] == "1700000000.000100"
    assert float(second["ts"]) > float(first["ts"])
    calls = fake.calls_to("chat.postMessage")
    assert [c.params["blocks"] for c in calls] == [blocks, blocks]
    assert calls[0].header("content-type") == "application/json;charset=utf-8"
    assert calls[1].header("Content-Type") == "application/x-www-form-urlencoded"
    assert all(c.status == 200 and c.ok and c.token == fake.token for c in calls)
    assert calls[0].at <= calls[1].at
    assert [m["text"] for m in fake.messages("C1")] == ["hello", "again"]

    client.chat_update(channel="C1", ts=first["ts"], text="edited")
    assert fake.message("C1", first["ts"])["text"] == "edited"  # type: ignore[index]
    assert fake.methods() == ["chat.postMessage", "chat.postMessage", "chat.update"]

    fake.reset()
    assert fake.calls == [] and fake.all_text() == ""


def test_auth_is_checked(fake: FakeSlack) -> None:
    for token in ("xoxb-wrong", None):
        with pytest.raises(SlackApiError) as err:
            WebClient(token=token, base_url=fake.base_url).auth_test()
        assert err.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as err:
        WebClient(token=fake.app_token, base_url=fake.base_url).chat_postMessage(
            channel="C1", text="x"
        )
    assert err.value.response["error"] == "not_allowed_token_type"
    with pytest.raises(SlackApiError) as err:
        _client(fake).apps_connections_open(app_token=fake.token)
    assert err.value.response["error"] == "not_allowed_token_type"
    assert [c.status for c in fake.calls] == [200, 200, 200, 200]

    me = _client(fake).auth_test()
    assert (me["user_id"], me["bot_id"], me["team_id"]) == ("UBOT", "BBOT", "T1")
    assert me["url"] and me["user"]


def test_rate_limit_is_retried_by_slack_sdk(fake: FakeSlack) -> None:
    client = _client(fake)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=1))
    fake.fail_next("chat.postMessage", status=429, retry_after=1)

    result = client.chat_postMessage(channel="C1", text="after the limit")

    assert result["ok"]
    calls = fake.calls_to("chat.postMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[0].response == {"ok": False, "error": "ratelimited"}
    assert calls[1].at - calls[0].at >= 1.0  # Retry-After was honoured
    assert fake.wait_for("chat.postMessage", lambda c: c.ok).params["text"] == "after the limit"


def test_rate_limit_without_retry_handler_surfaces(fake: FakeSlack) -> None:
    fake.fail_next("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as err:
        _client(fake).chat_postMessage(channel="C1", text="x")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "7"
    assert _client(fake).chat_postMessage(channel="C1", text="x")["ok"]


def test_error_and_custom_handler_injection(fake: FakeSlack) -> None:
    client = _client(fake)
    fake.error_next("chat.postMessage", error="channel_not_found")
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C404", text="x")
    assert err.value.response["error"] == "channel_not_found"
    assert client.chat_postMessage(channel="C1", text="x")["ok"]

    def reactions_add(params: dict[str, Any]) -> dict[str, Any]:
        if params["name"] == "nope":
            raise SlackApiFault("invalid_name")
        return {}

    fake.on("reactions.add", reactions_add)
    assert client.reactions_add(channel="C1", timestamp="1.2", name="eyes")["ok"]
    with pytest.raises(SlackApiError) as err:
        client.reactions_add(channel="C1", timestamp="1.2", name="nope")
    assert err.value.response["error"] == "invalid_name"
    with pytest.raises(SlackApiError) as err:
        client.api_call("no.such.method")
    assert err.value.response["error"] == "unknown_method"


def test_directory_methods(fake: FakeSlack) -> None:
    client = _client(fake)
    fake.users["U3"] = {"name": "carol", "real_name": "Carol C", "is_admin": True}
    alice = client.users_info(user="U1")["user"]
    assert (alice["id"], alice["name"], alice["real_name"]) == ("U1", "alice", "Alice")
    assert client.users_info(user="U3")["user"]["real_name"] == "Carol C"
    with pytest.raises(SlackApiError) as err:
        client.users_info(user="U999")
    assert err.value.response["error"] == "user_not_found"

    assert client.usergroups_users_list(usergroup="S1")["users"] == ["U1", "U2"]
    with pytest.raises(SlackApiError):
        client.usergroups_users_list(usergroup="S404")

    channel = client.conversations_info(channel="C1")["channel"]
    assert (channel["id"], channel["name"]) == ("C1", "general")
    with pytest.raises(SlackApiError) as err:
        client.conversations_info(channel="C404")
    assert err.value.response["error"] == "channel_not_found"

    eph = client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    assert eph["message_ts"]
    home = {
        "type": "home",
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "h"}}],
    }
    published = client.views_publish(user_id="U1", view=home)
    assert published["view"]["type"] == "home"
    assert fake.home_view("U1") == published["view"]
    assert fake.wait_for("views.publish").params["view"] == home


def test_files_upload_v2_end_to_end(fake: FakeSlack) -> None:
    content = "line one\nleaky-secret-value \u00e9\n"
    result = _client(fake).files_upload_v2(
        channel="C1",
        content=content,
        filename="report.txt",
        title="Report",
        initial_comment="here it is",
    )

    assert result["file"]["title"] == "Report"
    assert fake.methods() == [
        "files.getUploadURLExternal",
        "upload",
        "files.completeUploadExternal",
    ]
    (upload,) = fake.uploaded_files
    assert upload.content == content.encode("utf-8")
    assert upload.length == len(content.encode("utf-8"))
    assert (upload.title, upload.channel_id, upload.initial_comment) == (
        "Report",
        "C1",
        "here it is",
    )
    assert upload.completed and upload.filename == "report.txt"
    complete = fake.wait_for("files.completeUploadExternal")
    assert complete.params["files"] == [{"id": upload.file_id, "title": "Report"}]
    assert complete.uploads == {upload.file_id: content.encode("utf-8")}
    assert result["file"]["id"] == upload.file_id
    assert "leaky-secret-value" in fake.all_text()


def test_all_text_sees_decoded_form_values(fake: FakeSlack) -> None:
    secret = "p@ss/w+rd&=x"
    _client(fake).api_call("chat.postMessage", data={"channel": "C1", "text": f"pw {secret}"})
    assert secret in fake.all_text()
    assert fake.token not in fake.all_text()  # headers are not part of it


def test_response_url_posts_are_recorded(fake: FakeSlack) -> None:
    url = fake.response_url("approve-42")
    response = WebhookClient(url).send(text="approved", replace_original=True)
    assert response.status_code == 200

    call = fake.wait_for("response_url:approve-42")
    assert call.params == {"text": "approved", "replace_original": True}
    assert "approved" in fake.all_text()

    fake.fail_next("response_url:approve-42", status=500)
    assert WebhookClient(url).send(text="again").status_code == 500


def test_wait_for_times_out_with_what_was_seen(fake: FakeSlack) -> None:
    _client(fake).auth_test()
    with pytest.raises(AssertionError, match=r"auth\.test\(200\)"):
        fake.wait_for("chat.postMessage", timeout=0.2)


def test_delay_next_holds_the_answer(fake: FakeSlack) -> None:
    fake.delay_next("auth.test", 0.3)
    started = time.monotonic()
    _client(fake).auth_test()
    assert time.monotonic() - started >= 0.3


# ---------------------------------------------------------------------- signing


def test_signature_matches_slack_sdk_verifier() -> None:
    body = slash_command_body("deploy api", response_url="http://127.0.0.1:9/x", trigger_id="t.1")
    headers = sign(SECRET, body)
    verifier = SignatureVerifier(SECRET)
    assert verifier.is_valid(
        body, headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
    )
    assert verifier.is_valid_request(body, headers)
    assert not SignatureVerifier("other").is_valid_request(body, headers)
    stale = sign(SECRET, body, timestamp=int(time.time()) - 3600)
    assert not verifier.is_valid_request(body, stale)

    fields = dict(urllib.parse.parse_qsl(body.decode()))
    assert set(fields) == {
        "token",
        "team_id",
        "team_domain",
        "channel_id",
        "channel_name",
        "user_id",
        "user_name",
        "command",
        "text",
        "api_app_id",
        "is_enterprise_install",
        "response_url",
        "trigger_id",
    }
    assert (fields["text"], fields["command"], fields["user_id"]) == ("deploy api", "/hq", "U1")
    assert fields["response_url"] == "http://127.0.0.1:9/x"


def test_block_actions_body_shape() -> None:
    body = block_actions_body(
        "approve", "op-7", user_id="U2", channel_id="C1", message_ts="1700000000.000200"
    )
    (payload_json,) = urllib.parse.parse_qs(body.decode())["payload"]
    payload = json.loads(payload_json)
    assert payload["type"] == "block_actions"
    assert payload["user"]["id"] == "U2" and payload["channel"]["id"] == "C1"
    assert payload["container"] == {
        "type": "message",
        "message_ts": "1700000000.000200",
        "channel_id": "C1",
        "is_ephemeral": False,
    }
    (action,) = payload["actions"]
    assert (action["action_id"], action["value"], action["type"]) == ("approve", "op-7", "button")
    assert payload["message"]["blocks"][0]["block_id"] == action["block_id"]
    assert payload["response_url"] == DEFAULT_RESPONSE_URL


def test_post_signed_round_trip(fake: FakeSlack) -> None:
    body = b'{"text": "signed"}'
    status, reply, elapsed = post_signed(
        fake.response_url("signed"), body, SECRET, content_type="application/json"
    )
    assert status == 200 and json.loads(reply) == {"ok": True} and elapsed >= 0
    call = fake.wait_for("response_url:signed")
    assert SignatureVerifier(SECRET).is_valid_request(body, call.headers)
    with pytest.raises(ValueError):
        post_signed("http://example.com/x", body, SECRET)


# ---------------------------------------------------------------------- Socket Mode


def test_socket_mode_round_trip_with_bolt() -> None:
    with FakeSlack(socket_mode=True) as fake:
        app = App(client=_client(fake))

        @app.command("/hq")
        def hq(ack: Ack, command: dict[str, Any], client: WebClient) -> None:
            ack("working on it")
            client.chat_postMessage(channel=command["channel_id"], text=f"ran {command['text']}")

        @app.action("approve")
        def approve(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
            ack()
            respond(text=f"approved {body['actions'][0]['value']}", replace_original=True)

        handler = SocketModeHandler(app, fake.app_token)
        try:
            handler.connect()  # type: ignore[no-untyped-call]
            socket = fake.socket_mode
            socket.wait_connected(timeout=5)

            envelope_id = socket.send_slash_command("status api", user_id="U2", channel_id="C1")
            ack = socket.wait_ack(envelope_id, timeout=5)
            assert ack == {"envelope_id": envelope_id, "payload": {"text": "working on it"}}
            posted = fake.wait_for("chat.postMessage")
            assert posted.params["text"] == "ran status api" and posted.params["channel"] == "C1"

            click = socket.send_block_action(
                "approve", "op-9", user_id="U1", response_url=fake.response_url("op-9")
            )
            assert socket.wait_ack(click, timeout=5) == {"envelope_id": click}
            answered = fake.wait_for("response_url:op-9")
            assert answered.params["text"] == "approved op-9"

            assert socket.ping(timeout=5) < 5

            socket.send_disconnect()  # Slack rotating the connection: the client reconnects
            socket.wait_connected(timeout=5, total=2)
            again = socket.send_slash_command("again")
            assert socket.wait_ack(again, timeout=5)["payload"] == {"text": "working on it"}
            assert fake.socket_mode.tickets_issued == 2
            assert fake.methods()[0] == "auth.test"  # bolt verifies the token at App()
            assert "apps.connections.open" in fake.methods()
        finally:
            handler.close()  # type: ignore[no-untyped-call]
        socket.wait_disconnected(timeout=5)


def test_socket_mode_hello_and_reconnect() -> None:
    from websockets.sync.client import connect

    with FakeSocketMode(app_id="A9") as socket:
        with connect(socket.new_url()) as ws:
            hello = json.loads(ws.recv(timeout=5))
            assert hello["type"] == "hello"
            assert hello["connection_info"] == {"app_id": "A9"}
            assert hello["num_connections"] == 1 and "debug_info" in hello
            socket.wait_connected()
            envelope_id = socket.send_slash_command("x")
            envelope = json.loads(ws.recv(timeout=5))
            assert envelope["type"] == "slash_commands" and envelope["accepts_response_payload"]
            assert envelope["payload"]["text"] == "x" and envelope["payload"]["command"] == "/hq"
            ws.send(json.dumps({"envelope_id": envelope_id}))
            assert socket.wait_ack(envelope_id) == {"envelope_id": envelope_id}
            with pytest.raises(AssertionError, match="no ack"):
                socket.wait_ack("missing", timeout=0.1)
        socket.wait_disconnected()  # client went away; the server keeps serving
        with connect(socket.new_url()) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
            socket.wait_connected()
        assert socket.connections_total == 2
