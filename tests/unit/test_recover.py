from __future__ import annotations

import socket
from typing import Any

from approvals.models import Backup, MirrorRun, OpState, utcnow
from bot.core import Bot


class Notes:
    def __init__(self) -> None:
        self.said: list[str] = []

    def announce(self, text: str) -> None:
        self.said.append(text)

    def update(self, request: Any) -> None:
        return None


def _running(bot: Bot, command: str, **fields: Any) -> str:
    """Record alice's running Slack operation of ``command``, owned by this process unless
    ``fields`` name another owner; return its id."""
    return bot.ops.create(
        source="slack",
        user_id="U0ALICE",
        user_name="alice",
        channel_id="C1",
        text=command,
        state=OpState.RUNNING,
        command=command,
        **fields,
    )


def test_work_of_a_dead_process_is_interrupted_and_its_backup_marked_failed(
    make_settings: Any,
) -> None:
    bot = Bot.create(make_settings())
    notes = Notes()
    bot.cards = notes  # type: ignore[assignment]
    dead_owner = f"{socket.gethostname()}:999999:dead"
    op = _running(bot, "backup now", owner=dead_owner)
    alive = _running(bot, "health")
    with bot.sessions.begin() as session:
        session.add(Backup(id="b-1", state="running", op_id=op, started_at=utcnow()))
        session.add(MirrorRun(state="running", op_id=op, started_at=utcnow()))
    assert bot.recover() == [op]
    assert bot.ops.get(op).state == "interrupted"
    assert bot.ops.get(alive).state == "running"  # ours: this process is alive
    with bot.sessions() as session:
        assert session.get(Backup, "b-1").state == "failed"
        assert session.query(MirrorRun).one().state == "failed"
    assert len(notes.said) == 1 and op in notes.said[0] and "interrupted" in notes.said[0]
    bot.close()
