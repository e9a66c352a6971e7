"""Turn the text after ``/hq`` into a command spec and typed arguments.

Slack clients replace straight quotes with curly ones and ``--`` with a long dash; those are put
back before ``shlex`` splits the text, as errbot's ``arg_botcmd`` does.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from commands.spec import CommandSpec, UserError

MAX_TEXT = 2000
MAX_REASON = 500

_TRANSLATE = str.maketrans(
    {
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u2014": "--",  # em dash: Slack turns "--" into it
        "\u2013": "--",  # en dash
        "\u2212": "-",
        "\u00a0": " ",
    }
)


@dataclass(frozen=True)
class Parsed:
    """A recognised command with typed arguments and the universal options."""

    spec: CommandSpec
    args: Mapping[str, Any]
    dry_run: bool = False
    reason: str | None = None
    text: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def normalize(text: str) -> str:
    """Given raw slash-command text, return it with smart quotes and long dashes undone."""
    return text.translate(_TRANSLATE).strip()


def tokenize(text: str) -> list[str]:
    """Split normalized text like a shell would, without ever running one."""
    if len(text) > MAX_TEXT:
        raise UserError(
            f"That command is too long ({len(text)} characters; the limit is {MAX_TEXT})."
        )
    try:
        return shlex.split(normalize(text))
    except ValueError as exc:  # unbalanced quotes
        raise UserError(f"I could not read that command: {exc}.") from None


def find_spec(
    tokens: list[str], registry: Mapping[str, CommandSpec]
) -> tuple[CommandSpec, list[str]]:
    """Given tokens, return the spec whose (multi-word) name is the longest prefix and the rest.
    Raise UserError when no command matches."""
    for length in range(min(3, len(tokens)), 0, -1):
        name = " ".join(tokens[:length]).lower()
        spec = registry.get(name)
        if spec is not None:
            return spec, tokens[length:]
    if not tokens:
        raise UserError("No command given. Try `/hq help`.")
    head = tokens[0].lower()
    family = sorted(n for n in registry if n.split()[0] == head)
    if family:
        usages = "\n".join(registry[n].usage for n in family)
        raise UserError(f"`{head}` needs a subcommand.", usage=usages)
    shown = head if len(head) <= 40 else head[:40] + "..."
    raise UserError(f"Unknown command `{shown}`. `/hq help` lists every command.")


def parse(text: str, registry: Mapping[str, CommandSpec]) -> Parsed:
    """Given the text after ``/hq``, return the parsed command. Raise UserError (with the usage
    line) on an unknown command or bad arguments."""
    tokens = tokenize(text)
    spec, rest = find_spec(tokens, registry)
    options = {o.name: o for o in spec.options}
    values: dict[str, Any] = {o.key: o.default for o in spec.options}
    positionals: list[str] = []
    dry_run = False
    reason: str | None = None
    index = 0

    def bad(message: str) -> UserError:
        return UserError(message, usage=spec.usage)

    def take_value(eq: str, inline: str, missing: str) -> str:
        """Return the value written after ``=``, else the next word (consumed). Raise UserError
        with ``missing`` when there is neither."""
        nonlocal index
        if eq:
            return inline
        if index < len(rest):
            index += 1
            return rest[index - 1]
        raise bad(missing)

    while index < len(rest):
        word = rest[index]
        index += 1
        if word == "--":
            positionals.extend(rest[index:])
            break
        if not word.startswith("--") or len(word) == 2:
            positionals.append(word)
            continue
        name, eq, inline = word.partition("=")
        if name == "--dry-run" and not eq:
            dry_run = True
            continue
        if name == "--reason":
            reason = take_value(eq, inline, '`--reason` needs a text, e.g. --reason "disk full".')
            if len(reason) > MAX_REASON:
                raise bad(f"The reason is too long (the limit is {MAX_REASON} characters).")
            continue
        option = options.get(name)
        if option is None:
            raise bad(f"Unknown option `{name[:40]}` for `{spec.name}`.")
        if option.flag:
            if eq:
                raise bad(f"`{name}` takes no value.")
            values[option.key] = True
            continue
        raw = take_value(eq, inline, f"`{name}` needs a value ({option.metavar}).")
        try:
            values[option.key] = option.parse(raw)
        except ValueError as exc:
            raise bad(f"Bad value for `{name}`: {exc}") from None

    required = [a for a in spec.args if a.required]
    if len(positionals) < len(required):
        missing = spec.args[len(positionals)].label
        raise bad(f"`{spec.name}` needs {missing}.")
    if len(positionals) > len(spec.args):
        extra = positionals[len(spec.args)][:40]
        raise bad(f"Unexpected argument `{extra}` for `{spec.name}`.")
    for arg, raw in zip(spec.args, positionals, strict=False):
        try:
            values[arg.name] = arg.parse(raw)
        except ValueError as exc:
            raise bad(f"Bad {arg.label}: {exc}") from None
    for arg in spec.args[len(positionals) :]:
        values.setdefault(arg.name, None)
    return Parsed(spec=spec, args=values, dry_run=dry_run, reason=reason, text=normalize(text))
