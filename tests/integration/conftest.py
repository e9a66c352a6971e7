"""Integration tests run against the sandbox (a docker compose stand-in of Harmoniq). When it
is not up and healthy, the session starts it once with ``bash sandbox/sandbox.sh up``; nothing
is skipped."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import console
from bot.core import Bot
from bot.settings import Settings, load_settings
from commands.infra import Infra, gateway

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_ENV = ROOT / "sandbox" / "hq-bot.env"
DEPLOY_DIR = ROOT / "sandbox" / "run" / "harmoniq"
PROJECT = "harmoniq-sandbox"
SERVICES = ("backend", "coturn", "minio", "postgres", "redis")


def _containers() -> list[tuple[str, str, str]]:
    """Return (service, status text, compose working dir) of the sandbox project's containers."""
    label = '{{.Label "com.docker.compose.service"}}\t{{.Status}}\t'
    label += '{{.Label "com.docker.compose.project.working_dir"}}'
    argv = ("docker", "ps", "--all", "--filter", f"label=com.docker.compose.project={PROJECT}")
    listed = gateway.run((*argv, "--format", label), timeout=30)
    rows = []
    for line in listed.text.splitlines():
        service, status, workdir = [*line.split("\t"), "", ""][:3]
        rows.append((service, status, workdir))
    return rows


def sandbox_status() -> dict[str, str]:
    """Return service -> docker status text of the sandbox's containers."""
    return {service: status for service, status, _ in _containers()}


def sandbox_is_ours() -> bool:
    """Return True when every sandbox container was made from this checkout's sandbox/run
    (another checkout, e.g. a CI clone, may have taken the project name, with other secrets)."""
    rows = _containers()
    return bool(rows) and all(Path(w) == DEPLOY_DIR for _, _, w in rows)


def sandbox_healthy() -> bool:
    status = sandbox_status()
    return all("(healthy)" in status.get(s, "") for s in SERVICES)


def wait_healthy(limit: float = 120.0) -> None:
    """Wait until every sandbox service is healthy; fail the test after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not sandbox_healthy():
        if time.monotonic() > deadline:
            pytest.fail(f"the sandbox is not healthy after {limit:g} s: {sandbox_status()}")
        time.sleep(1)


def container_of(service: str) -> str:
    return f"{PROJECT}-{service}-1"


def docker(*args: str) -> str:
    """Run ``docker ARGS`` through the gateway; return its stdout."""
    return gateway.run(("docker", *args), timeout=90).text


@pytest.fixture(scope="session")
def sandbox() -> None:
    """The sandbox of this checkout, up and healthy (``sandbox.sh up`` once when it is not)."""
    if sandbox_is_ours() and sandbox_healthy():
        return
    if not sandbox_is_ours() or any(s not in sandbox_status() for s in SERVICES):
        gateway.run(("bash", str(ROOT / "sandbox" / "sandbox.sh"), "up"), cwd=ROOT, timeout=1800)
    wait_healthy(240)


@pytest.fixture
def sandbox_settings(sandbox: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A factory of settings read from sandbox/hq-bot.env (relative paths resolved from the
    repository root), with the bot's database in tmp_path and optional overrides."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(ROOT)

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"hq_database_url": f"sqlite:///{tmp_path}/hq-bot.db"}
        values.update(overrides)
        return load_settings(SANDBOX_ENV, **values)

    return make


@pytest.fixture
def make_bot(sandbox_settings: Any) -> Iterator[Any]:
    """A factory of bots on sandbox settings, each with the real Infra; closed afterwards."""
    bots: list[Bot] = []

    def make(**overrides: Any) -> Bot:
        settings = sandbox_settings(**overrides)
        bot = Bot.create(settings, infra=Infra(settings))
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        bot.close()
        bot.infra.close()


def run_console(bot: Bot, text: str, user: str = "alice") -> tuple[int, str]:
    """Feed ``text`` (one command a line) to the console door; return (exit code, output)."""
    out = io.StringIO()
    code = console.run(bot, user, io.StringIO(text if text.endswith("\n") else text + "\n"), out)
    return code, out.getvalue()
