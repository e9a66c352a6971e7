"""Approval cards: the Block Kit message an approver decides on, and its console twin."""

from __future__ import annotations

import logging
import threading
from typing import Any, TextIO

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from approvals.models import ApprovalRequest, ReqState
from bot import render
from bot.core import Responder
from bot.slack import APPROVE_ACTION as APPROVE
from bot.slack import DENY_ACTION as DENY
from bot.slack import SlackResponder
from commands.spec import Result

log = logging.getLogger(__name__)

OUTCOME = {
    ReqState.PENDING: ":lock: Waiting for approval",
    ReqState.APPROVED: ":white_check_mark: Approved",
    ReqState.RUNNING: ":hourglass_flowing_sand: Approved, running",
    ReqState.SUCCEEDED: ":white_check_mark: Approved and done",
    ReqState.FAILED: ":x: Approved, but it failed",
    ReqState.INTERRUPTED: ":warning: Interrupted",
    ReqState.DENIED: ":no_entry: Denied",
    ReqState.EXPIRED: ":hourglass: Expired unapproved",
    ReqState.CANCELLED: ":wastebasket: Cancelled by the requester",
}


def _when(request: ApprovalRequest) -> int:
    return int(request.expires_at.timestamp())


def card_blocks(request: ApprovalRequest) -> list[dict[str, Any]]:
    """Given a request, return its card: the plan exactly as it will run, who asks and why,
    the expiry, and (while pending) Approve / Deny buttons carrying the request id."""
    state = ReqState(request.state)
    expires = _when(request)
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": f"Approval needed: /hq {request.command}"[:150]},
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Requested by*\n<@{request.requester_id}>"},
                {"type": "mrkdwn", "text": f"*Request*\n`{request.id}`"},
                {"type": "mrkdwn", "text": f"*Reason*\n{request.reason[:500]}"},
                {
                    "type": "mrkdwn",
                    "text": f"*Expires*\n<!date^{expires}^{{date_short_pretty}} {{time}}|"
                    f"{request.expires_at:%Y-%m-%d %H:%M} UTC>",
                },
            ],
        },
    ]
    for chunk in render.chunks(f"*Plan* (exactly what will run)\n```{request.plan_text}```"):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": chunk}})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"plan sha256 `{request.plan_digest[:16]}`"},
            ],
        }
    )
    if state == ReqState.PENDING:
        blocks.append(
            {
                "type": "actions",
                "block_id": f"decide:{request.id}",
                "elements": [
                    {
                        "type": "button",
                        "action_id": APPROVE,
                        "style": "primary",
                        "text": {"type": "plain_text", "text": "Approve"},
                        "value": request.id,
                        "confirm": {
                            "title": {"type": "plain_text", "text": "Run it now?"},
                            "text": {
                                "type": "mrkdwn",
                                "text": f"`/hq {request.command}` runs as soon as you approve.",
                            },
                            "confirm": {"type": "plain_text", "text": "Approve"},
                            "deny": {"type": "plain_text", "text": "Back"},
                        },
                    },
                    {
                        "type": "button",
                        "action_id": DENY,
                        "style": "danger",
                        "text": {"type": "plain_text", "text": "Deny"},
                        "value": request.id,
                    },
                ],
            }
        )
    else:
        by = ", ".join(f"<@{u}>" for u in request.decided_by.split(",") if u)
        line = OUTCOME[state] + (f" by {by}" if by and state != ReqState.EXPIRED else "")
        if request.outcome:
            line += f"\n{request.outcome[:1500]}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": line}})
    return blocks


def card_text(request: ApprovalRequest) -> str:
    state = ReqState(request.state)
    return f"{OUTCOME[state]}: /hq {request.command} ({request.id}) by <@{request.requester_id}>"


class SlackCards:
    """Cards as Slack messages in the request's channel (or the ops channel)."""

    def __init__(self, client: WebClient, ops_channel: str) -> None:
        self.client = client
        self.ops_channel = ops_channel

    def post(self, request: ApprovalRequest) -> tuple[str, str] | None:
        channel = request.channel_id if request.source == "slack" else self.ops_channel
        if not channel:
            return None
        response = self.client.chat_postMessage(
            channel=channel, text=card_text(request), blocks=card_blocks(request)
        )
        return str(response["channel"]), str(response["ts"])

    def update(self, request: ApprovalRequest) -> None:
        if not request.card_ts:
            return
        self.client.chat_update(
            channel=request.card_channel,
            ts=request.card_ts,
            text=card_text(request),
            blocks=card_blocks(request),
        )

    def tell(self, request: ApprovalRequest, text: str) -> None:
        channel = request.card_channel or request.channel_id
        if request.source != "slack" or not channel:
            return
        try:
            self.client.chat_postEphemeral(channel=channel, user=request.requester_id, text=text)
        except SlackApiError as err:
            log.warning("could not tell the requester: %s", err.response.get("error"))

    def announce(self, text: str) -> None:
        if self.ops_channel:
            self.client.chat_postMessage(channel=self.ops_channel, text=text)

    def post_result(self, result: Result, heading: str) -> None:
        """Post a result (a job's, a digest) in the ops channel, files in its thread."""
        if not self.ops_channel:
            return
        blocks = [
            {"type": "context", "elements": [{"type": "mrkdwn", "text": heading}]},
            *render.blocks(result),
        ]
        response = self.client.chat_postMessage(
            channel=self.ops_channel, text=f"{heading}: {result.title}"[:3000], blocks=blocks[:50]
        )
        if result.attachments:
            self.client.files_upload_v2(
                channel=str(response["channel"]),
                thread_ts=str(response["ts"]),
                file_uploads=[
                    {"content": a.content, "filename": a.filename, "title": a.title or a.filename}
                    for a in result.attachments
                ],
            )

    def responder(self, request: ApprovalRequest) -> Responder | None:
        if not request.card_ts:
            return None
        return SlackResponder(
            self.client, request.card_channel, request.requester_id, thread_ts=request.card_ts
        )


class ConsoleCards:
    """Cards printed on the console: the same facts, as text."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        with self._lock:
            print(render.mrkdwn_to_text(text), file=self.out, flush=True)

    def post(self, request: ApprovalRequest) -> tuple[str, str] | None:
        self._print(
            f"APPROVAL NEEDED {request.id}: /hq {request.command} by {request.requester_id}\n"
            f"  reason: {request.reason}\n  expires: {request.expires_at:%Y-%m-%d %H:%M} UTC\n"
            f"  plan (sha256 {request.plan_digest[:16]}):\n    "
            + request.plan_text.replace("\n", "\n    ")
            + f"\n  another approver: /as NAME, then /hq approve {request.id} (or deny)"
        )
        return None

    def update(self, request: ApprovalRequest) -> None:
        self._print(card_text(request))

    def tell(self, request: ApprovalRequest, text: str) -> None:
        return None

    def announce(self, text: str) -> None:
        self._print(text)

    def post_result(self, result: Result, heading: str) -> None:
        self._print(f"{heading}\n{render.text(result)}")

    def responder(self, request: ApprovalRequest) -> Responder | None:
        return None
