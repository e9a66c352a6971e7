"""The console door: ``/hq ...`` lines from stdin, results as text on stdout.

``/as NAME`` switches the acting user, so one terminal can play requester and approver.
"""

from __future__ import annotations

import re
import sys
import threading
from typing import TextIO

from bot import render
from bot.core import Bot
from commands.spec import Actor, Result

PROMPT = "hq> "
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CONSOLE_CHANNEL = "console"


class ConsoleResponder:
    """Prints progress and results; safe to call from worker threads."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        with self._lock:
            print(text, file=self._out, flush=True)

    def started(self, op_id: str, headline: str) -> None:
        self._print(f"... {render.mrkdwn_to_text(headline)} [{op_id}]")

    def progress(self, op_id: str, line: str) -> None:
        self._print(f"  - {render.mrkdwn_to_text(line)}")

    def finished(self, op_id: str, result: Result) -> None:
        self._print(render.text(result))
        for attachment in result.attachments:
            body = attachment.content.decode("utf-8", errors="replace")
            self._print(f"--- {attachment.filename} ---\n{body.rstrip()}\n--- end ---")


def actor_for(name: str) -> Actor:
    """Given a console user name, return the actor. A name shaped like a Slack user ID is used
    as that ID, so policy settings written with Slack IDs apply in the console too."""
    user_id = name.upper() if re.match(r"^[uUwW][A-Za-z0-9]{2,20}$", name) else name
    return Actor(user_id=user_id, user_name=name, channel_id=CONSOLE_CHANNEL, source="console")


def run(bot: Bot, user: str, stdin: TextIO, stdout: TextIO) -> int:
    """Read commands until EOF; return 0, or 1 when any command failed (for scripts)."""
    interactive = stdin.isatty()
    responder = ConsoleResponder(stdout)
    actor = actor_for(user)
    failures = 0
    while True:
        if interactive:
            print(f"{actor.user_name} {PROMPT}", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line in {"/quit", "/exit"}:
            break
        if line.startswith("/as"):
            name = line[3:].strip()
            if not NAME.match(name):
                print("Usage: /as NAME (letters, digits, . _ -)", file=stdout, flush=True)
                continue
            actor = actor_for(name)
            print(f"Now acting as {actor.user_name}.", file=stdout, flush=True)
            continue
        text = line[3:].strip() if line.startswith("/hq") else line
        reply = bot.submit(actor, text, responder)
        if reply.result is not None:
            responder.finished(reply.op_id, reply.result)
        else:
            print(render.mrkdwn_to_text(reply.text), file=stdout, flush=True)
        outcome = reply.result.ok if reply.result is not None else reply.ok
        if reply.future is not None:
            outcome = reply.future.result().ok
        failures += 0 if outcome else 1
    return 1 if failures else 0


def main(bot: Bot, user: str) -> int:
    return run(bot, user, sys.stdin, sys.stdout)
