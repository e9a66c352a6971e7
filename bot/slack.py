"""The Slack doors: a Bolt app shared by HTTP mode and Socket Mode.

The ``/hq`` listener only parses, checks policy and records (all quick), acks, and leaves long
work to the bot's own worker pool; the pool reports through :class:`SlackResponder`: a status
message in the channel, updated as steps finish, and the result in its thread.
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from slack_bolt import App, BoltRequest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)

from bot import render
from bot.core import Bot, Reply
from bot.settings import Settings
from commands.spec import Actor, Result

log = logging.getLogger(__name__)
MAX_BODY = 1_000_000
APPROVE_ACTION = "hq_approve"
DENY_ACTION = "hq_deny"


def web_client(settings: Settings) -> WebClient:
    """Given settings, return a WebClient on SLACK_API_URL that waits out 429s (Retry-After)
    and retries dropped connections."""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    return WebClient(
        token=token,
        base_url=settings.slack_api_url,
        timeout=15,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=3),
        ],
    )


class SlackResponder:
    """Posts a status message in the channel, updates it as steps finish, and posts the result
    (and any files) in its thread. Falls back to the command's response_url when the bot cannot
    post in the channel (for example it was not invited)."""

    def __init__(
        self,
        client: WebClient,
        channel: str,
        user_id: str,
        response_url: str | None = None,
        thread_ts: str | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.user_id = user_id
        self.response_url = response_url
        self.thread_ts = thread_ts
        self.ts: str | None = None
        self._headline = ""
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def _status_text(self, icon: str) -> str:
        body = "\n".join(f"• {line}" for line in self._lines[-15:])
        text = f"{icon} {self._headline} (requested by <@{self.user_id}>)"
        return f"{text}\n{body}" if body else text

    def started(self, op_id: str, headline: str) -> None:
        with self._lock:
            self._headline = f"{headline} [{op_id}]"
            try:
                response = self.client.chat_postMessage(
                    channel=self.channel,
                    text=self._status_text(":hourglass_flowing_sand:"),
                    thread_ts=self.thread_ts,
                )
                self.ts = str(response["ts"])
                self.channel = str(response.get("channel") or self.channel)
            except SlackApiError as err:
                log.warning("cannot post in %s: %s", self.channel, err.response.get("error"))
                self.ts = None

    def progress(self, op_id: str, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            if self.ts:
                self.client.chat_update(
                    channel=self.channel,
                    ts=self.ts,
                    text=self._status_text(":hourglass_flowing_sand:"),
                )

    def finished(self, op_id: str, result: Result) -> None:
        with self._lock:
            icon = ":white_check_mark:" if result.ok else ":x:"
            blocks = render.blocks(result)
            if self.ts is None:
                self._fallback(result, blocks)
                return
            self.client.chat_update(channel=self.channel, ts=self.ts, text=self._status_text(icon))
            # The result goes in the thread the status message opened (or already lives in).
            thread = self.thread_ts or self.ts
            self.client.chat_postMessage(
                channel=self.channel, thread_ts=thread, text=result.title[:3000], blocks=blocks
            )
            if result.attachments:
                self.client.files_upload_v2(
                    channel=self.channel,
                    thread_ts=thread,
                    file_uploads=[
                        {
                            "content": a.content,
                            "filename": a.filename,
                            "title": a.title or a.filename,
                        }
                        for a in result.attachments
                    ],
                )

    def _fallback(self, result: Result, blocks: list[dict[str, Any]]) -> None:
        if not self.response_url:
            log.error("result of a command could not be delivered (no channel, no response_url)")
            return
        from slack_sdk.webhook import WebhookClient

        WebhookClient(self.response_url).send(
            text=result.title[:3000], blocks=blocks, response_type="ephemeral"
        )


def reply_blocks(reply: Reply) -> list[dict[str, Any]]:
    if reply.result is not None:
        return render.blocks(reply.result)
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": chunk}}
        for chunk in render.chunks(reply.text)
    ]


def build_app(
    bot: Bot,
    client: WebClient,
    signing_secret: str | None,
    *,
    responder_factory: Callable[..., SlackResponder] = SlackResponder,
) -> App:
    """Given the core and a WebClient, return the Bolt app serving ``/hq`` and the buttons."""
    # Listeners run on the request's own thread (process_before_response) and only do quick,
    # local work before they ack: no polling for the ack, no Bolt listener pool to queue on.
    # Slow work goes to the bot's worker pool; Slack calls after a click go to `door`.
    door = ThreadPoolExecutor(max_workers=8, thread_name_prefix="hq-door")
    app = App(
        client=client,
        signing_secret=signing_secret or "unused-in-socket-mode",
        token_verification_enabled=False,
        process_before_response=True,
        listener_executor=door,
        request_verification_enabled=signing_secret is not None,
        ignoring_self_events_enabled=True,
    )

    @app.command("/hq")
    def on_command(ack: Any, command: dict[str, Any], client: WebClient) -> None:
        actor = Actor(
            user_id=str(command.get("user_id", "")),
            user_name=str(command.get("user_name", "")),
            channel_id=str(command.get("channel_id", "")),
            source="slack",
        )
        responder = responder_factory(
            client, actor.channel_id, actor.user_id, command.get("response_url")
        )
        reply = bot.submit(actor, str(command.get("text", "")), responder)
        ack(text=reply.text[:3000], blocks=reply_blocks(reply), response_type="ephemeral")

    def on_decision(verb: str) -> Callable[..., None]:
        def handler(ack: Any, body: dict[str, Any], client: WebClient) -> None:
            ack()
            door.submit(decide_logged, body, client)

        def decide_logged(body: dict[str, Any], client: WebClient) -> None:
            try:
                decide(body, client)
            except Exception:
                log.exception("handling a button click failed")

        def decide(body: dict[str, Any], client: WebClient) -> None:
            # The click goes down the same path as `/hq approve ID`: parse, policy, audit.
            user = body.get("user") or {}
            channel = (body.get("channel") or {}).get("id") or ""
            actions = body.get("actions") or [{}]
            request_id = str(actions[0].get("value", ""))[:64]
            actor = Actor(
                user_id=str(user.get("id", "")),
                user_name=str(user.get("username") or user.get("name") or ""),
                channel_id=str(channel),
                source="slack",
            )
            responder = responder_factory(
                client, actor.channel_id, actor.user_id, body.get("response_url")
            )
            reply = bot.submit(actor, f"{verb} {shlex.quote(request_id)}", responder)
            if not reply.ok and channel:
                try:
                    client.chat_postEphemeral(
                        channel=channel, user=actor.user_id, text=reply.text[:3000]
                    )
                except SlackApiError as err:
                    log.warning("could not answer a click: %s", err.response.get("error"))

        return handler

    @app.event("app_home_opened")
    def on_home(event: dict[str, Any], client: WebClient) -> None:
        user = str(event.get("user", ""))
        if event.get("tab", "home") == "home" and user:
            door.submit(publish_home, user, client)

    def publish_home(user: str, client: WebClient) -> None:
        from bot.home import home_view

        try:
            client.views_publish(user_id=user, view=home_view(bot, user))
        except Exception:
            log.exception("publishing the App Home tab failed")

    app.action(APPROVE_ACTION)(on_decision("approve"))
    app.action(DENY_ACTION)(on_decision("deny"))
    return app


class _Handler(BaseHTTPRequestHandler):
    server: HttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    def _send(self, status: int, body: bytes, headers: dict[str, Any] | None = None) -> None:
        self.send_response(status)
        sent_type = False
        for name, value in (headers or {}).items():
            values = value if isinstance(value, list) else [value]
            for item in values:
                if name.lower() == "content-length":
                    continue
                sent_type = sent_type or name.lower() == "content-type"
                self.send_header(name, str(item))
        if not sent_type:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        route = self.server.get_routes.get(path)
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, b'{"error":"not found"}')
            return
        status, content_type, body = route()
        self._send(status, body, {"Content-Type": content_type})

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/slack/events":
            self._send(HTTPStatus.NOT_FOUND, b'{"error":"not found"}')
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b'{"error":"too large"}')
            return
        body = self.rfile.read(length).decode("utf-8", errors="replace")
        headers: dict[str, str | Sequence[str]] = {k.lower(): [v] for k, v in self.headers.items()}
        response = self.server.app.dispatch(BoltRequest(body=body, headers=headers))
        self._send(response.status, response.body.encode(), dict(response.headers))


class HttpServer(ThreadingHTTPServer):
    """``POST /slack/events`` into Bolt, plus ``GET /healthz`` and friends."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        app: App,
        get_routes: dict[str, Callable[[], tuple[int, str, bytes]]],
    ) -> None:
        self.app = app
        self.get_routes = get_routes
        super().__init__(address, _Handler)


def health_route(bot: Bot, client: WebClient | None) -> Callable[[], tuple[int, str, bytes]]:
    def route() -> tuple[int, str, bytes]:
        status = bot.self_health(client)
        code = HTTPStatus.OK if status["ok"] else HTTPStatus.SERVICE_UNAVAILABLE
        return code, "application/json", json.dumps(status).encode()

    return route


def group_resolver(client: WebClient, ttl: float = 300.0) -> Callable[[str], list[str]]:
    """Given a WebClient, return a function that lists a user group's members (cached for
    ``ttl`` seconds). Errors propagate: the approval policy treats them as 'no'."""
    cache: dict[str, tuple[float, list[str]]] = {}
    lock = threading.Lock()

    def resolve(group: str) -> list[str]:
        now = time.monotonic()
        with lock:
            hit = cache.get(group)
            if hit and now - hit[0] < ttl:
                return hit[1]
        response = client.usergroups_users_list(usergroup=group)
        users = [str(u) for u in response.get("users") or []]
        with lock:
            cache[group] = (now, users)
        return users

    return resolve
