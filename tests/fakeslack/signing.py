"""Requests built and signed the way Slack builds and signs them.

Slack signs every HTTP request it sends to an app with the app's signing secret:
``X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<timestamp>:<raw body>">`` together with
``X-Slack-Request-Timestamp: <unix seconds>``. The payload builders here produce the same fields
Slack sends for a slash command and for a button click (``block_actions``); the ``*_payload``
functions return the decoded form (what a Socket Mode envelope carries), the ``*_body`` functions
the raw HTTP body (what the Events/Interactivity request URL receives).

Nothing here talks to anything but the loopback interface: :func:`post_signed` refuses other hosts.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, NamedTuple, ParamSpec, TypeVar
from urllib.parse import urlencode, urlsplit

# A response_url nobody listens on (port 1 on loopback refuses at once): a default that can never
# reach a real Slack host. Tests that care pass ``FakeSlack.response_url(name)`` instead.
DEFAULT_RESPONSE_URL = "http://127.0.0.1:1/response_url/unset"
# The legacy "verification token" Slack still puts in every payload.
DEFAULT_VERIFICATION_TOKEN = "fake-verification-token"
DEFAULT_MESSAGE_TS = "1700000000.000100"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

_LOOPBACK_HOSTS = frozenset({"localhost", "::1"})
_trigger_counter = itertools.count(1)

P = ParamSpec("P")
PayloadT = TypeVar("PayloadT")


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Return the two headers Slack adds to a request carrying ``body``.

    ``timestamp`` defaults to now; pass an old one to test replay rejection.
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    base = b"v0:" + str(ts).encode("ascii") + b":" + body
    digest = hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


def new_trigger_id() -> str:
    """A fresh trigger_id shaped like Slack's (``<digits>.<digits>.<hex>``)."""
    n = next(_trigger_counter)
    return f"{1700000000 + n}.{100000 + n}.{secrets.token_hex(16)}"


def _action_ts() -> str:
    return f"{time.time():.6f}"


def slash_command_payload(
    text: str,
    user_id: str = "U1",
    user_name: str = "alice",
    channel_id: str = "C1",
    command: str = "/hq",
    response_url: str = DEFAULT_RESPONSE_URL,
    trigger_id: str | None = None,
    team_id: str = "T1",
    *,
    channel_name: str = "general",
    team_domain: str = "fake",
    api_app_id: str = "A1",
    token: str = DEFAULT_VERIFICATION_TOKEN,
) -> dict[str, str]:
    """The fields of a slash command invocation, all strings, in the order Slack sends them."""
    return {
        "token": token,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id if trigger_id is not None else new_trigger_id(),
    }


def block_actions_payload(
    action_id: str,
    value: str,
    user_id: str = "U1",
    channel_id: str = "C1",
    message_ts: str = DEFAULT_MESSAGE_TS,
    response_url: str = DEFAULT_RESPONSE_URL,
    block_id: str = "hq_actions",
    *,
    user_name: str = "alice",
    channel_name: str = "general",
    team_id: str = "T1",
    team_domain: str = "fake",
    api_app_id: str = "A1",
    token: str = DEFAULT_VERIFICATION_TOKEN,
    trigger_id: str | None = None,
    button_text: str | None = None,
    message_text: str = "",
    message_blocks: list[dict[str, Any]] | None = None,
    bot_user_id: str = "UBOT",
    bot_id: str = "BBOT",
    action_ts: str | None = None,
) -> dict[str, Any]:
    """The ``block_actions`` payload Slack sends when a user clicks a button in a message.

    Unless ``message_blocks`` is given, the clicked message is a single ``actions`` block holding
    the button, so ``block_id``/``action_id``/``value`` agree between message and action.
    """
    label = button_text if button_text is not None else action_id
    button_text_obj = {"type": "plain_text", "text": label, "emoji": True}
    if message_blocks is None:
        message_blocks = [
            {
                "type": "actions",
                "block_id": block_id,
                "elements": [
                    {
                        "type": "button",
                        "action_id": action_id,
                        "text": button_text_obj,
                        "value": value,
                    }
                ],
            }
        ]
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": api_app_id,
        "token": token,
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": False,
        },
        "trigger_id": trigger_id if trigger_id is not None else new_trigger_id(),
        "team": {"id": team_id, "domain": team_domain},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_name},
        "message": {
            "type": "message",
            "subtype": "bot_message",
            "user": bot_user_id,
            "bot_id": bot_id,
            "app_id": api_app_id,
            "team": team_id,
            "ts": message_ts,
            "text": message_text,
            "blocks": message_blocks,
        },
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id,
                "text": button_text_obj,
                "value": value,
                "type": "button",
                "action_ts": action_ts if action_ts is not None else _action_ts(),
            }
        ],
    }


def interactive_body(payload: dict[str, Any]) -> bytes:
    """Any interactivity payload (block_actions, view_submission, ...) as Slack's form body."""
    return urlencode({"payload": json.dumps(payload, separators=(",", ":"))}).encode("ascii")


def _body_of(
    build: Callable[P, PayloadT],
) -> Callable[[Callable[[PayloadT], bytes]], Callable[P, bytes]]:
    """Given a payload builder, return a decorator that turns an encoder of its payload (into
    the HTTP body Slack POSTs) into a function taking the builder's own parameters."""

    def decorate(encode: Callable[[PayloadT], bytes]) -> Callable[P, bytes]:
        @functools.wraps(build)  # the builder's signature, the encoder's name and docstring
        def body(*args: P.args, **kwargs: P.kwargs) -> bytes:
            return encode(build(*args, **kwargs))

        body.__name__, body.__qualname__ = encode.__name__, encode.__qualname__
        body.__doc__ = encode.__doc__
        return body

    return decorate


@_body_of(slash_command_payload)
def slash_command_body(payload: dict[str, str]) -> bytes:
    """A slash command as the form-encoded body Slack POSTs to the request URL."""
    return urlencode(payload).encode("ascii")


@_body_of(block_actions_payload)
def block_actions_body(payload: dict[str, Any]) -> bytes:
    """A button click as the form-encoded ``payload=<json>`` body Slack POSTs."""
    return interactive_body(payload)


class PostResult(NamedTuple):
    """What :func:`post_signed` got back: unpacks as ``status, body, elapsed``."""

    status: int
    body: bytes
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


def _require_loopback(url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not (
        host.startswith("127.") or host in _LOOPBACK_HOSTS
    ):
        raise ValueError(f"post_signed only talks to loopback http(s) URLs, not {url!r}")


def post_signed(
    url: str,
    body: bytes,
    secret: str,
    timestamp: int | None = None,
    content_type: str = FORM_CONTENT_TYPE,
    extra_headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> PostResult:
    """POST ``body`` to ``url`` signed with ``secret``, as Slack would.

    Returns ``(status, body, elapsed_seconds)``; an HTTP error status is returned, not raised.
    Environment proxies are ignored (the target is always loopback).
    """
    _require_loopback(url)
    headers = {
        "Content-Type": content_type,
        "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
    }
    headers.update(sign(secret, body, timestamp))
    if extra_headers:
        headers.update(extra_headers)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.perf_counter()
    try:
        with opener.open(request, timeout=timeout) as response:
            data: bytes = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as error:
        data = error.read()
        status = int(error.code)
    return PostResult(status, data, time.perf_counter() - started)
