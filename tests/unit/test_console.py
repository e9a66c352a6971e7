from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

from bot import console
from bot.core import Bot
from commands.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[2]


def _run(bot: Bot, text: str, user: str = "alice") -> tuple[int, str]:
    out = io.StringIO()
    code = console.run(bot, user, io.StringIO(text), out)
    return code, out.getvalue()


def test_help_lists_every_command_with_its_usage(make_settings: Any) -> None:
    bot = Bot.create(make_settings())
    code, out = _run(bot, "/hq help\n")
    assert code == 0
    for spec in REGISTRY.values():
        assert spec.usage.replace("`", "") in out
    bot.close()


def test_unknown_command_is_rejected_with_a_hint_and_recorded(make_settings: Any) -> None:
    bot = Bot.create(make_settings())
    code, out = _run(bot, "/hq frobnicate now\n")
    assert code == 1
    assert "Unknown command frobnicate" in out and "/hq help" in out
    [op] = bot.ops.recent(1)
    assert op.state == "rejected" and op.text == "frobnicate now" and op.source == "console"
    bot.close()


def test_as_switches_the_acting_user(make_settings: Any) -> None:
    bot = Bot.create(make_settings())
    _, out = _run(bot, "/as U0BOB\n/hq help\n/as bad name!\n")
    assert "Now acting as U0BOB" in out and "Usage: /as NAME" in out
    assert bot.ops.recent(1)[0].user_id == "U0BOB"
    bot.close()


def test_piped_console_runs_as_a_program(make_settings: Any, tmp_path: Path) -> None:
    env_file = tmp_path / "bot.env"
    env_file.write_text(f"HQ_DATABASE_URL=sqlite:///{tmp_path}/c.db\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--env-file", str(env_file), "console"],
        input="/hq help\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "/hq help [CMD]" in proc.stdout
