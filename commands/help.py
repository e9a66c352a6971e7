"""``/hq help [CMD]``: every command with its usage, or one command in detail."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from commands.spec import Arg, CommandSpec, Context, Plan, Progress, Result, Role, UserError


def _plan(args: Mapping[str, Any], ctx: Context) -> Plan:
    topic = (args.get("command") or "").strip().lower()
    return Plan(command="help", summary=f"help {topic}".strip(), data={"topic": topic})


def render_help(registry: Mapping[str, CommandSpec], topic: str = "") -> str:
    """Given the registry and an optional command name, return the help text (Slack mrkdwn).
    Raise UserError when the topic names no command."""
    if topic:
        matches = [s for n, s in registry.items() if n == topic or n.split()[0] == topic]
        if not matches:
            raise UserError(f"No command `{topic[:40]}`. `/hq help` lists every command.")
        lines = []
        for spec in matches:
            lines.append(f"*{spec.name}*: {spec.summary}")
            lines.append(f"`{spec.usage}`")
            for arg in spec.args:
                if arg.help:
                    lines.append(f"  • {arg.label}: {arg.help}")
            for opt in spec.options:
                if opt.help:
                    lines.append(f"  • {opt.name}: {opt.help}")
            if spec.destructive:
                lines.append("  • needs a second person's approval and a reason")
            lines.append("")
        return "\n".join(lines).rstrip()
    sections: dict[str, list[CommandSpec]] = {}
    for spec in registry.values():
        sections.setdefault(spec.section or "General", []).append(spec)
    lines = ["*hq-bot*: the Harmoniq runbook from Slack. `/hq help CMD` for details."]
    for section, specs in sections.items():
        lines.append(f"\n*{section}*")
        for spec in specs:
            mark = " :lock:" if spec.destructive else ""
            lines.append(f"`{spec.usage}`{mark}\n    {spec.summary}")
    lines.append("\n:lock: needs a second person's approval. Any command takes `--dry-run`.")
    return "\n".join(lines)


def _execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
    text = render_help(ctx.registry, str(plan.data.get("topic", "")))
    return Result(ok=True, title="hq-bot help", text=text)


SPECS = (
    CommandSpec(
        name="help",
        summary="List every command with its usage, or explain one.",
        args=(Arg("command", required=False, metavar="CMD", help="a command name"),),
        plan=_plan,
        execute=_execute,
        roles=frozenset({Role.ANYONE}),
        immediate=True,
        readonly=True,
        section="General",
    ),
)
