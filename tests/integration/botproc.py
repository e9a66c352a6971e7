"""Real `hq-bot serve --http` processes for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import TEST_BOT_TOKEN, TEST_SIGNING_SECRET
from tests.integration.conftest import ROOT, SANDBOX_ENV

AUDIT_KEY = "integration-audit-key-0123456789abcdef"


def bot_env(api_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """Return the environment of a bot process: this one's, minus any hq-bot or Slack setting,
    plus the fake Slack, the database, a shared audit key and scheduled jobs kept far away (a
    test that wants one sets its cron)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HQ_", "SLACK_"))}
    return {
        **base,
        "SLACK_BOT_TOKEN": TEST_BOT_TOKEN,
        "SLACK_SIGNING_SECRET": TEST_SIGNING_SECRET,
        "SLACK_API_URL": api_url,
        "HQ_DATABASE_URL": database_url,
        "HQ_AUDIT_KEY": AUDIT_KEY,
        "HQ_OPS_CHANNEL": "C0OPS",
        "HQ_SCHEDULE_BACKUP": "0 2 1 1 *",
        "HQ_SCHEDULE_MINIO": "0 3 1 1 *",
        "HQ_SCHEDULE_DIGEST": "0 4 1 1 *",
        "HQ_SCHEDULE_TLS": "0 5 1 1 *",
        "HQ_SCHEDULE_METRICS": "0 6 1 1 *",
        **extra,
    }


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, env: dict[str, str], tmp: Path, name: str) -> None:
        self.port = _port()
        self.log = (tmp / f"{name}.log").open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bot.cli",
                "--env-file",
                str(SANDBOX_ENV),
                "serve",
                "--http",
                "--port",
                str(self.port),
            ],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url_base}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"{name} did not start: {self.log_text()}") from None
                time.sleep(0.2)

    @property
    def url_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.url_base}/slack/events"

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
