"""Operations: every command run, from any door, with its state and timings.

State changes are compare-and-set updates (``UPDATE ... WHERE state IN (...)``), so two threads
or two replicas can never both move the same operation forward.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from approvals.models import FINAL_STATES, Operation, OpState, utcnow

OWNER = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
STALE_AFTER = dt.timedelta(minutes=2)


def new_id(prefix: str = "op") -> str:
    """Return a short random id that is easy to read out and type (``op-3f9c2a1b7d``)."""
    return f"{prefix}-{secrets.token_hex(5)}"


class OperationStore:
    """Create, move and read operations."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def create(self, **kwargs: Any) -> str:
        """Insert an operation (see :meth:`values`) and return its id."""
        values = self.values(**kwargs)
        # A Core insert: this runs on the ack path, where the ORM's unit of work costs more.
        with self._sessions.begin() as session:
            session.execute(insert(Operation).values(**values))
        return str(values["id"])

    @staticmethod
    def values(
        *,
        source: str,
        user_id: str,
        user_name: str,
        channel_id: str,
        text: str,
        state: OpState,
        command: str = "",
        op_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Return the column values of a new operation. ``text`` must already be redacted."""
        now = utcnow()
        values: dict[str, Any] = {
            "id": op_id or new_id(),
            "source": source,
            "user_id": user_id,
            "user_name": user_name,
            "channel_id": channel_id,
            "command": command,
            "text": text,
            "state": state.value,
            "owner": OWNER,
            "created_at": now,
            "result_summary": "",
            "error": "",
            "status_channel": "",
            "status_ts": "",
            "attempts": 0,
            **fields,
        }
        if state in FINAL_STATES:
            values["finished_at"] = now
        return values

    def transition(
        self, op_id: str, from_states: Iterable[OpState], to_state: OpState, **fields: Any
    ) -> bool:
        """Move an operation to ``to_state`` if it is in one of ``from_states``. Return whether
        this caller won the move."""
        values: dict[str, Any] = {"state": to_state.value, **fields}
        if to_state == OpState.RUNNING:
            values.setdefault("started_at", utcnow())
            values.setdefault("heartbeat_at", utcnow())
            values.setdefault("owner", OWNER)
        if to_state in (
            OpState.SUCCEEDED,
            OpState.FAILED,
            OpState.INTERRUPTED,
            OpState.CANCELLED,
            OpState.REFUSED,
        ):
            values.setdefault("finished_at", utcnow())
        states = [s.value for s in from_states]
        with self._sessions.begin() as session:
            result = session.execute(
                update(Operation)
                .where(Operation.id == op_id, Operation.state.in_(states))
                .values(**values)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def set_fields(self, op_id: str, **fields: Any) -> None:
        with self._sessions.begin() as session:
            session.execute(update(Operation).where(Operation.id == op_id).values(**fields))

    def heartbeat(self, op_ids: Sequence[str]) -> None:
        if not op_ids:
            return
        with self._sessions.begin() as session:
            session.execute(
                update(Operation)
                .where(Operation.id.in_(op_ids), Operation.state == OpState.RUNNING.value)
                .values(heartbeat_at=utcnow())
            )

    def get(self, op_id: str) -> Operation | None:
        with self._sessions() as session:
            return session.get(Operation, op_id)

    def recent(self, limit: int = 20) -> list[Operation]:
        with self._sessions() as session:
            rows = session.scalars(
                select(Operation).order_by(Operation.created_at.desc()).limit(limit)
            )
            return list(rows)

    def claim_orphans(self) -> list[Operation]:
        """Mark as interrupted the operations a dead process left queued or running, and return
        them. An operation is orphaned when its owner is a dead process on this host, or when
        its heartbeat is older than STALE_AFTER (the owner is on another host, or hung)."""
        host = socket.gethostname()
        stale_before = utcnow() - STALE_AFTER
        claimed: list[Operation] = []
        with self._sessions() as session:
            candidates = list(
                session.scalars(
                    select(Operation).where(
                        Operation.state.in_([OpState.RUNNING.value, OpState.QUEUED.value])
                    )
                )
            )
        for op in candidates:
            if op.owner == OWNER:
                continue
            owner_host, _, rest = op.owner.partition(":")
            pid_text = rest.partition(":")[0]
            beat = op.heartbeat_at or op.started_at or op.created_at
            if beat.tzinfo is None:
                beat = beat.replace(tzinfo=dt.UTC)
            dead_here = owner_host == host and pid_text.isdigit() and not _alive(int(pid_text))
            if not (dead_here or beat < stale_before):
                continue
            if self.transition(
                op.id,
                [OpState.RUNNING, OpState.QUEUED],
                OpState.INTERRUPTED,
                error="the process running it stopped before it finished",
            ):
                claimed.append(op)
        return claimed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
