"""The README's settings table, made from the Settings model so the two cannot drift."""

from __future__ import annotations

import sys
from pathlib import Path

from bot.settings import Settings

BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def table() -> str:
    """Return every setting with its default and meaning as a Markdown table."""
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(str(d) for d in default)
        shown = "(unset)" if default in (None, "") else f"`{default}`"
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name.upper()}` | {shown} | {meaning} |")
    return "\n".join(lines)


def rewrite(text: str) -> str:
    """Given the README, return it with the table between the markers replaced."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> int:
    if "--write" in sys.argv[1:]:
        README.write_text(rewrite(README.read_text()))
    else:
        print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
