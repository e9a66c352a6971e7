"""Run hq-bot's Slack door in-process against the fake Slack, and drive it with signed
requests exactly as Slack sends them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from bot.cards import SlackCards
from bot.core import Bot
from bot.settings import Settings
from bot.slack import HttpServer, build_app, group_resolver, health_route, web_client
from tests.fakeslack import (
    FakeSlack,
    PostResult,
    block_actions_body,
    post_signed,
    slash_command_body,
)

SECRET = "test-signing-secret-0123456789"


@dataclass
class SlackBot:
    fake: FakeSlack
    bot: Bot
    server: HttpServer
    settings: Settings
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/slack/events"

    def command(
        self,
        text: str,
        user: str = "U0ALICE",
        name: str = "alice",
        channel: str = "C1",
        **kwargs: Any,
    ) -> PostResult:
        body = slash_command_body(
            text,
            user_id=user,
            user_name=name,
            channel_id=channel,
            response_url=self.fake.response_url(f"cmd-{user}"),
        )
        return post_signed(self.url, body, SECRET, **kwargs)

    def click(
        self, action: str, value: str, user: str, channel: str = "C1", message_ts: str = "1.000001"
    ) -> PostResult:
        body = block_actions_body(
            action,
            value,
            user_id=user,
            channel_id=channel,
            message_ts=message_ts,
            response_url=self.fake.response_url(f"click-{user}"),
        )
        return post_signed(self.url, body, SECRET)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.bot.close()


def start_slack_bot(fake: FakeSlack, settings: Settings, infra: Any = None) -> SlackBot:
    client = web_client(settings)
    bot = Bot.create(settings, infra=infra, resolve_group=group_resolver(client))
    bot.cards = SlackCards(client, settings.hq_ops_channel)
    bot.recover()
    app = build_app(bot, client, SECRET)
    server = HttpServer(("127.0.0.1", 0), app, {"/healthz": health_route(bot, client)})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return SlackBot(fake=fake, bot=bot, server=server, settings=settings, _thread=thread)
