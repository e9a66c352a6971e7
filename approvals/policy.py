"""Who may run what. A policy error means deny."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from commands.spec import Actor, CommandSpec, Role


@dataclass(frozen=True)
class Policy:
    """Request rights. ``operators`` empty means anyone in the channel may run operator
    commands; approvers may always run them."""

    operators: frozenset[str]
    approvers: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        return cls(
            operators=frozenset(settings.hq_operators),
            approvers=frozenset(settings.hq_approvers),
        )

    def refusal(self, actor: Actor, spec: CommandSpec) -> str | None:
        """Given who asks for which command, return why it is refused, or None to allow."""
        try:
            if Role.ANYONE in spec.roles:
                return None
            if actor.source == "scheduler":
                # Jobs are configured by the operators; destructive ones still need approval.
                return None if Role.OPERATOR in spec.roles else "the scheduler may not run it"
            if Role.OPERATOR in spec.roles and (
                not self.operators or actor.user_id in self.operators
            ):
                return None
            if actor.user_id in self.approvers and (
                Role.APPROVER in spec.roles or Role.OPERATOR in spec.roles
            ):
                return None
            return f"<@{actor.user_id}> may not run `{spec.name}` (not an operator)."
        except Exception:  # a policy that cannot decide denies
            return f"`{spec.name}` refused: the policy could not decide."
