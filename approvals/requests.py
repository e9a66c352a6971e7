"""Approval requests as a state machine in the database.

pending -> approved -> running -> succeeded | failed | interrupted
pending -> denied | expired | cancelled

Every move is ``UPDATE ... WHERE id = :id AND state = :from``: whoever changes the row wins, so
a double click, a retried delivery or two replicas seeing one click run the action once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from approvals.models import ApprovalRequest, ApprovalVote, ReqState, utcnow
from approvals.operations import new_id
from commands.spec import Actor

log = logging.getLogger(__name__)
GroupResolver = Callable[[str], Iterable[str]]
OPEN = (ReqState.PENDING,)


@dataclass(frozen=True)
class ApprovalPolicy:
    """Who may approve, how many must, for how long, and which commands need it.

    The requester can never approve their own request, whatever is configured here."""

    approvers: frozenset[str]
    group: str = ""
    required: int = 1
    ttl: dt.timedelta = dt.timedelta(minutes=30)
    extra_commands: frozenset[str] = frozenset()
    resolve_group: GroupResolver | None = None

    @classmethod
    def from_settings(
        cls, settings: Any, resolve_group: GroupResolver | None = None
    ) -> ApprovalPolicy:
        return cls(
            approvers=frozenset(settings.hq_approvers),
            group=settings.hq_approver_group,
            required=settings.hq_approvals_required,
            ttl=dt.timedelta(minutes=settings.hq_approval_ttl_minutes),
            extra_commands=frozenset(settings.hq_approval_commands),
            resolve_group=resolve_group,
        )

    def needs_approval(self, command: str, destructive: bool) -> bool:
        return destructive or command in self.extra_commands

    def approve_refusal(self, actor: Actor, request: ApprovalRequest) -> str | None:
        """Given who clicks and the request, return why they may not approve, or None."""
        try:
            if not actor.user_id or actor.user_id == request.requester_id:
                return "You asked for this yourself: a second person has to approve it."
            if actor.user_id in self.approvers:
                return None
            if (
                self.group
                and self.resolve_group is not None
                and actor.user_id in set(self.resolve_group(self.group))
            ):
                return None
            return f"<@{actor.user_id}> is not an approver."
        except Exception:
            log.exception("approver check failed")
            return "The approver check failed, so the answer is no."


@dataclass(frozen=True)
class Decision:
    """The outcome of a click or a command on a request. ``run`` is true for exactly one
    caller: the one whose approval completed the request and who must now execute it."""

    ok: bool
    message: str
    request: ApprovalRequest | None = None
    run: bool = False
    changed: bool = False


@dataclass
class Requests:
    """Create, decide and move approval requests."""

    sessions: sessionmaker[Session]
    policy: ApprovalPolicy
    clock: Callable[[], dt.datetime] = field(default=utcnow)

    def create(
        self,
        *,
        actor: Actor,
        op_id: str,
        command: str,
        text: str,
        args: Mapping[str, Any],
        plan_digest: str,
        plan_text: str,
        reason: str,
    ) -> ApprovalRequest:
        now = self.clock()
        request = ApprovalRequest(
            id=new_id("rq"),
            op_id=op_id,
            command=command,
            text=text,
            args_json=json.dumps(dict(args), sort_keys=True, default=str),
            plan_digest=plan_digest,
            plan_text=plan_text,
            requester_id=actor.user_id,
            requester_name=actor.user_name,
            source=actor.source,
            channel_id=actor.channel_id,
            reason=reason,
            state=ReqState.PENDING.value,
            required=max(1, self.policy.required),
            created_at=now,
            expires_at=now + self.policy.ttl,
        )
        with self.sessions.begin() as session:
            session.add(request)
        return request

    def get(self, request_id: str) -> ApprovalRequest | None:
        with self.sessions() as session:
            return session.get(ApprovalRequest, request_id)

    def move(
        self, request_id: str, from_states: Iterable[ReqState], to: ReqState, **fields: Any
    ) -> bool:
        """Compare-and-set the request's state. Return whether this caller made the move."""
        states = [s.value for s in from_states]
        with self.sessions.begin() as session:
            result = session.execute(
                update(ApprovalRequest)
                .where(ApprovalRequest.id == request_id, ApprovalRequest.state.in_(states))
                .values(state=to.value, **fields)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def set_card(self, request_id: str, channel: str, ts: str) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(ApprovalRequest)
                .where(ApprovalRequest.id == request_id)
                .values(card_channel=channel, card_ts=ts)
            )

    def _expired(self, request: ApprovalRequest) -> bool:
        expires = request.expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.UTC)
        return self.clock() >= expires

    def _closed_message(self, request: ApprovalRequest) -> str:
        by = f" by {request.decided_by}" if request.decided_by else ""
        return f"Request {request.id} is already {request.state}{by}."

    def approve(self, actor: Actor, request_id: str) -> Decision:
        """Record ``actor``'s approval. Refuse self-approval, non-approvers, expired and closed
        requests. The caller whose vote completes the request gets ``run=True``."""
        request = self.get(request_id)
        if request is None:
            return Decision(False, f"No request `{request_id}`.")
        if request.state != ReqState.PENDING:
            return Decision(False, self._closed_message(request), request)
        refusal = self.policy.approve_refusal(actor, request)
        if refusal:
            return Decision(False, refusal, request)
        if self._expired(request):
            changed = self.move(request_id, OPEN, ReqState.EXPIRED, decided_at=self.clock())
            return Decision(
                False,
                f"Request {request_id} has expired; ask again.",
                self.get(request_id),
                changed=changed,
            )
        try:
            with self.sessions.begin() as session:
                session.add(
                    ApprovalVote(request_id=request_id, user_id=actor.user_id, at=self.clock())
                )
        except IntegrityError:
            return Decision(False, f"You have already approved {request_id}.", request)
        with self.sessions() as session:
            votes = (
                session.scalar(
                    select(func.count())
                    .select_from(ApprovalVote)
                    .where(ApprovalVote.request_id == request_id)
                )
                or 0
            )
            voters = list(
                session.scalars(
                    select(ApprovalVote.user_id)
                    .where(ApprovalVote.request_id == request_id)
                    .order_by(ApprovalVote.at)
                )
            )
        if votes < request.required:
            return Decision(
                True, f"Approval {votes} of {request.required} recorded for {request_id}.", request
            )
        won = self.move(
            request_id,
            OPEN,
            ReqState.APPROVED,
            decided_at=self.clock(),
            decided_by=",".join(voters)[:256],
        )
        current = self.get(request_id)
        if not won:
            return Decision(False, self._closed_message(current or request), current)
        return Decision(True, f"Approved by <@{actor.user_id}>.", current, run=True, changed=True)

    def deny(self, actor: Actor, request_id: str) -> Decision:
        """An approver (not the requester: they cancel) denies a pending request."""
        request = self.get(request_id)
        if request is None:
            return Decision(False, f"No request `{request_id}`.")
        if request.state != ReqState.PENDING:
            return Decision(False, self._closed_message(request), request)
        if actor.user_id != request.requester_id:
            refusal = self.policy.approve_refusal(actor, request)
            if refusal:
                return Decision(False, refusal, request)
        else:
            return Decision(False, "Use `/hq cancel` to withdraw your own request.", request)
        won = self.move(
            request_id, OPEN, ReqState.DENIED, decided_at=self.clock(), decided_by=actor.user_id
        )
        current = self.get(request_id)
        if not won:
            return Decision(False, self._closed_message(current or request), current)
        return Decision(True, f"Denied by <@{actor.user_id}>.", current, changed=True)

    def cancel(self, actor: Actor, request_id: str) -> Decision:
        """The requester withdraws a pending request."""
        request = self.get(request_id)
        if request is None:
            return Decision(False, f"No request `{request_id}`.")
        if actor.user_id != request.requester_id:
            return Decision(False, "Only the requester can cancel a request.", request)
        if request.state != ReqState.PENDING:
            return Decision(False, self._closed_message(request), request)
        won = self.move(
            request_id, OPEN, ReqState.CANCELLED, decided_at=self.clock(), decided_by=actor.user_id
        )
        current = self.get(request_id)
        if not won:
            return Decision(False, self._closed_message(current or request), current)
        return Decision(True, f"Cancelled by <@{actor.user_id}>.", current, changed=True)

    def pending(self) -> list[ApprovalRequest]:
        with self.sessions() as session:
            rows = session.scalars(
                select(ApprovalRequest)
                .where(ApprovalRequest.state == ReqState.PENDING.value)
                .order_by(ApprovalRequest.created_at)
            )
            return list(rows)

    def expire_due(self) -> list[ApprovalRequest]:
        """Move every pending request past its expiry to expired; return those this caller
        moved."""
        moved = []
        for request in self.pending():
            if self._expired(request) and self.move(
                request.id, OPEN, ReqState.EXPIRED, decided_at=self.clock()
            ):
                moved.append(self.get(request.id) or request)
        return moved

    def by_op(self, op_id: str) -> ApprovalRequest | None:
        with self.sessions() as session:
            return session.scalars(
                select(ApprovalRequest).where(ApprovalRequest.op_id == op_id)
            ).first()
