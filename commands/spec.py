"""The shape of a runbook command: spec, typed arguments, plan, result.

A command is data (a :class:`CommandSpec`) plus two functions. ``plan`` is pure: given parsed
arguments and a read-only context it returns what will be done. ``execute`` takes that plan,
injected clients and a progress callback, does the work and returns a :class:`Result`.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class UserError(Exception):
    """A problem the user can act on. Its message is shown in chat as it is, so it must never
    contain a secret or raw exception text."""

    def __init__(self, message: str, usage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class Role(enum.StrEnum):
    """Who may request a command. Approval rights are a separate setting (approvers)."""

    ANYONE = "anyone"
    OPERATOR = "operator"
    APPROVER = "approver"


ArgParser = Callable[[str], Any]


def whole_number(low: int, high: int, unit: str = "") -> Callable[[str], int]:
    """Given bounds and what is counted (``lines``), return a parser for an argument that must be
    a whole number from ``low`` to ``high``; it raises ValueError ``expected a number of lines
    from 1 to 10000`` for anything else."""
    expected = f"expected a number {f'of {unit} ' if unit else ''}from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(expected) from None
        if not low <= value <= high:
            raise ValueError(expected)
        return value

    return parse


@dataclass(frozen=True)
class Arg:
    """A positional argument: ``name`` for usage, ``parse`` turns the text into a typed value
    (raising ValueError with a sentence for bad input)."""

    name: str
    parse: ArgParser = str
    required: bool = True
    help: str = ""
    metavar: str = ""

    @property
    def label(self) -> str:
        return self.metavar or self.name.upper()


@dataclass(frozen=True)
class Option:
    """A ``--name VALUE`` option, or a ``--name`` flag when ``flag`` is true."""

    name: str
    parse: ArgParser = str
    flag: bool = False
    default: Any = None
    metavar: str = "VALUE"
    help: str = ""

    @property
    def key(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Step:
    """One step of a plan: what an approver reads, and the argv it runs when there is one."""

    title: str
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What a command will do. ``summary`` and ``steps`` are exactly what an approver sees and
    what ``--dry-run`` prints; ``data`` carries the values ``execute`` needs (never secrets)."""

    command: str
    summary: str
    steps: tuple[Step, ...] = ()
    targets: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)
    # Facts shown to the approver that change by themselves (a backup's age): not hashed, so
    # the passing of time alone does not void an approval.
    notes: tuple[str, ...] = ()

    def canonical(self) -> str:
        """Return the canonical JSON of the plan (sorted keys, no spaces), without notes."""
        body = {
            "command": self.command,
            "summary": self.summary,
            "steps": [[s.title, list(s.argv)] for s in self.steps],
            "targets": list(self.targets),
            "data": self.data,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)

    def digest(self) -> str:
        """Return the SHA-256 of the canonical plan: what an approval is bound to."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def as_text(self) -> str:
        lines = [self.summary, *self.notes]
        for number, step in enumerate(self.steps, 1):
            lines.append(f"{number}. {step.title}")
        return "\n".join(lines)


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Row:
    """One line of a result table: a name, its status, a detail and optionally a duration."""

    name: str
    status: Status
    detail: str = ""
    seconds: float | None = None


@dataclass(frozen=True)
class Attachment:
    """A file to upload with the result (long logs, exports, charts)."""

    filename: str
    content: bytes
    title: str = ""


@dataclass(frozen=True)
class Result:
    """What a command returns. ``title`` is the headline; ``text`` a body in Slack mrkdwn."""

    ok: bool
    title: str
    text: str = ""
    rows: tuple[Row, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return self.title


Progress = Callable[[str], None]


@dataclass(frozen=True)
class Actor:
    """Who asked, from where: a Slack user in a channel, a console user, or the scheduler."""

    user_id: str
    user_name: str = ""
    channel_id: str = ""
    source: str = "slack"

    @property
    def label(self) -> str:
        return self.user_name or self.user_id


class Context(Protocol):
    """What plan and execute are given. ``plan`` may only read (``settings``, ``lookup``);
    ``execute`` also uses ``infra`` (lazily built clients) and ``governance`` (the bot's own
    approvals and audit services, for the governance commands)."""

    @property
    def settings(self) -> Any: ...

    @property
    def actor(self) -> Actor: ...

    @property
    def operation_id(self) -> str: ...

    @property
    def infra(self) -> Any: ...

    @property
    def governance(self) -> Any: ...

    @property
    def registry(self) -> Mapping[str, CommandSpec]: ...


PlanFn = Callable[[Mapping[str, Any], Context], Plan]
ExecuteFn = Callable[[Plan, Context, Progress], Result]


@dataclass(frozen=True)
class CommandSpec:
    """A runbook command. ``name`` may have several words (``backup now``)."""

    name: str
    summary: str
    plan: PlanFn
    execute: ExecuteFn
    args: tuple[Arg, ...] = ()
    options: tuple[Option, ...] = ()
    destructive: bool = False
    roles: frozenset[Role] = frozenset({Role.OPERATOR})
    section: str = ""
    # Commands that answer at once, inside Slack's ack: quick (help, pending, approve).
    immediate: bool = False
    # Commands that only read what is already known: an immediate read-only command is
    # recorded after it answered, in one write with its audit event.
    readonly: bool = False

    @property
    def usage(self) -> str:
        parts = ["/hq", self.name]
        for arg in self.args:
            parts.append(arg.label if arg.required else f"[{arg.label}]")
        for opt in self.options:
            parts.append(f"[{opt.name}]" if opt.flag else f"[{opt.name} {opt.metavar}]")
        if self.destructive:
            parts.append('--reason "..."')
        parts.append("[--dry-run]")
        return " ".join(parts)


def option_names(options: Sequence[Option]) -> set[str]:
    return {o.name for o in options}
