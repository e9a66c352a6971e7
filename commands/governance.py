"""Governance commands: pending, approve, deny, cancel, audit. They act on the bot's own
approvals and audit services, which the bot hands over as ``ctx.governance``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

from commands.spec import (
    Arg,
    CommandSpec,
    Context,
    ExecuteFn,
    Option,
    Plan,
    PlanFn,
    Progress,
    Result,
    Role,
    whole_number,
)

REQUEST_ID = re.compile(r"^rq-[0-9a-f]{10}$")
USER = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
COMMAND = re.compile(r"^[a-z][a-z -]{0,40}$")


class Governance(Protocol):
    """What the bot offers these commands (implemented in bot.core)."""

    def decide(self, verb: str, ctx: Any, request_id: str) -> Result: ...

    def pending_result(self) -> Result: ...

    def audit_result(self, limit: int, user: str | None, command: str | None) -> Result: ...

    def audit_verify_result(self) -> Result: ...

    def schedule_result(self) -> Result: ...


def request_id(text: str) -> str:
    if not REQUEST_ID.match(text):
        raise ValueError("expected a request id like rq-0123456789 (see `/hq pending`)")
    return text


audit_limit = whole_number(1, 200, "rows")


def user_filter(text: str) -> str:
    text = text.strip("<@>").split("|")[0]
    if not USER.match(text):
        raise ValueError("expected a Slack user ID or a console user name")
    return text


def command_filter(text: str) -> str:
    if not COMMAND.match(text):
        raise ValueError("expected a command name like `restore` or `redis flushdb`")
    return text


def _plan_for(name: str) -> PlanFn:
    def plan(args: Mapping[str, Any], ctx: Context) -> Plan:
        shown = " ".join(str(v) for v in args.values() if v not in (None, False))
        return Plan(command=name, summary=f"{name} {shown}".strip(), data=dict(args))

    return plan


def _decide(verb: str) -> ExecuteFn:
    def execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
        result: Result = ctx.governance.decide(verb, ctx, str(plan.data["request"]))
        return result

    return execute


def _pending(plan: Plan, ctx: Context, progress: Progress) -> Result:
    result: Result = ctx.governance.pending_result()
    return result


def _audit(plan: Plan, ctx: Context, progress: Progress) -> Result:
    data = plan.data
    result: Result = ctx.governance.audit_result(
        int(data.get("n") or 20), data.get("user"), data.get("command")
    )
    return result


def _audit_verify(plan: Plan, ctx: Context, progress: Progress) -> Result:
    result: Result = ctx.governance.audit_verify_result()
    return result


def _schedule(plan: Plan, ctx: Context, progress: Progress) -> Result:
    result: Result = ctx.governance.schedule_result()
    return result


_REQUEST = (
    Arg("request", parse=request_id, metavar="ID", help="the request id, e.g. rq-0a1b2c3d4e"),
)
_EVERYONE = frozenset({Role.ANYONE})
SECTION = "Approvals and audit"


def _listing(name: str, summary: str, execute: ExecuteFn) -> CommandSpec:
    """Return the spec of a list anyone may ask for, answered at once from what is known."""
    return CommandSpec(
        name=name,
        summary=summary,
        plan=_plan_for(name),
        execute=execute,
        roles=_EVERYONE,
        immediate=True,
        readonly=True,
        section=SECTION,
    )


def _decision(verb: str, summary: str) -> CommandSpec:
    """Given ``approve``, ``deny`` or ``cancel``, return its spec: the same command but for the
    verb it hands to the bot's approvals service."""
    return CommandSpec(
        name=verb,
        summary=summary,
        args=_REQUEST,
        plan=_plan_for(verb),
        execute=_decide(verb),
        roles=_EVERYONE,
        immediate=True,
        section=SECTION,
    )


SPECS = (
    _listing("pending", "List approval requests waiting for a second person.", _pending),
    _decision(
        "approve",
        "Approve a pending request (never your own). The Approve button does the same.",
    ),
    _decision("deny", "Deny a pending request. The Deny button does the same."),
    _decision("cancel", "Withdraw your own pending request."),
    CommandSpec(
        name="audit",
        summary="Show the newest audit events, optionally for one user or command.",
        args=(Arg("n", parse=audit_limit, required=False, metavar="N", help="rows (1-200)"),),
        options=(
            Option("--user", parse=user_filter, metavar="U", help="only this user"),
            Option("--command", parse=command_filter, metavar="C", help="only this command"),
        ),
        plan=_plan_for("audit"),
        execute=_audit,
        roles=frozenset({Role.OPERATOR}),
        immediate=True,
        readonly=True,
        section=SECTION,
    ),
    _listing("schedule", "List scheduled jobs with their next run and last result.", _schedule),
    CommandSpec(
        name="audit verify",
        summary="Check the audit trail's hash chain and name the first bad row.",
        plan=_plan_for("audit verify"),
        execute=_audit_verify,
        roles=frozenset({Role.OPERATOR}),
        section=SECTION,
    ),
)
