"""The App Home tab: current health, pending approvals and the last backups."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from approvals.models import Backup, utcnow
from bot import render
from bot.digest import age, human
from commands.spec import Actor, Row, Status


def home_view(bot: Any, user_id: str) -> dict[str, Any]:
    """Given the bot and the viewer, return the Home tab view (Block Kit)."""
    now = utcnow()
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Harmoniq at a glance"}},
    ]
    spec = bot.registry.get("health")
    if spec is not None:
        actor = Actor(user_id, "", "", "slack")
        ctx = bot.context(actor, "home")
        health = bot._execute(spec, spec.plan({}, ctx), ctx, lambda _l: None)
        blocks.extend(render.blocks(health))
    pending = bot.requests.pending()
    lines = [
        f"`{r.id}` `/hq {r.command}` by <@{r.requester_id}>: {r.reason[:200]}" for r in pending
    ]
    blocks.append({"type": "divider"})
    blocks.append(
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": "*Pending approvals*\n" + ("\n".join(lines) if lines else "none"),
            },
        }
    )
    with bot.sessions() as session:
        backups = list(
            session.scalars(
                select(Backup)
                .where(Backup.state == "complete", Backup.deleted_at.is_(None))
                .order_by(Backup.started_at.desc())
                .limit(5)
            )
        )
    rows = [
        Row(
            b.id,
            Status.OK if b.verified else Status.WARN,
            f"{age(b.started_at, now)} ago, {human(b.size)}, "
            f"{'verified' if b.verified else 'not verified'}",
        )
        for b in backups
    ]
    text = "\n".join(render.row_text(r) for r in rows) if rows else "none yet"
    blocks.append({"type": "divider"})
    blocks.append(
        {"type": "section", "text": {"type": "mrkdwn", "text": "*Last backups*\n" + text}}
    )
    return {"type": "home", "blocks": blocks[:100]}
