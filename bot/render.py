"""Render results as Block Kit (Slack) or plain text (console)."""

from __future__ import annotations

import re
from typing import Any

from commands.spec import Result, Row, Status

ICON = {
    Status.OK: ":white_check_mark:",
    Status.WARN: ":warning:",
    Status.FAIL: ":x:",
    Status.UNKNOWN: ":grey_question:",
}
WORD = {Status.OK: "OK", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.UNKNOWN: "UNKNOWN"}
SECTION_LIMIT = 2900  # Slack allows 3000 characters in a section's text
MAX_BLOCKS = 45  # Slack allows 50 blocks a message


def chunks(text: str, size: int = SECTION_LIMIT) -> list[str]:
    out: list[str] = []
    while text:
        if len(text) <= size:
            out.append(text)
            break
        cut = text.rfind("\n", 0, size)
        cut = cut if cut > 0 else size
        out.append(text[:cut])
        text = text[cut:].lstrip("\n")
    return out


def row_text(row: Row) -> str:
    timing = f" _({row.seconds:.2f} s)_" if row.seconds is not None else ""
    detail = f": {row.detail}" if row.detail else ""
    return f"{ICON[row.status]} *{row.name}*{detail}{timing}"


def blocks(result: Result) -> list[dict[str, Any]]:
    """Given a result, return Block Kit blocks: headline, body, one line per row."""
    head = ":white_check_mark:" if result.ok else ":x:"
    out: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{head} *{result.title}*"[:3000]}}
    ]
    for chunk in chunks(result.text):
        out.append({"type": "section", "text": {"type": "mrkdwn", "text": chunk}})
    if result.rows:
        lines = "\n".join(row_text(r) for r in result.rows)
        for chunk in chunks(lines):
            out.append({"type": "section", "text": {"type": "mrkdwn", "text": chunk}})
    if len(out) > MAX_BLOCKS:
        out = [
            *out[: MAX_BLOCKS - 1],
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "(output shortened)"}]},
        ]
    return out


def mrkdwn_to_text(text: str) -> str:
    """Given Slack mrkdwn, return something readable on a terminal."""
    text = re.sub(r"<@([A-Z0-9]+)>", r"@\1", text)
    text = re.sub(r":(white_check_mark|x|warning|grey_question|no_entry|lock|hourglass):", "", text)
    return text.replace("*", "").replace("`", "").strip()


def text(result: Result) -> str:
    """Given a result, return it as plain text for the console."""
    head = "OK" if result.ok else "FAILED"
    lines = [f"[{head}] {mrkdwn_to_text(result.title)}"]
    if result.text:
        lines.append(mrkdwn_to_text(result.text))
    for row in result.rows:
        timing = f" ({row.seconds:.2f} s)" if row.seconds is not None else ""
        lines.append(f"  {WORD[row.status]:<8}{row.name}: {mrkdwn_to_text(row.detail)}{timing}")
    for attachment in result.attachments:
        lines.append(f"  (attachment {attachment.filename}, {len(attachment.content)} bytes)")
    return "\n".join(lines)
