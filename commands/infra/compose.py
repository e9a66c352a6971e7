"""docker compose v2 through the gateway.

:class:`ComposeArgv` builds argv tuples and does no I/O, so a command's plan can show (and an
approval can bind) the exact argv; :class:`Compose` runs them. Every argv starts with
``settings.hq_compose_command`` followed by ``-p PROJECT -f FILE``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from commands.infra import gateway
from commands.infra.gateway import Completed, InfraError

SERVICE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
Runner = Callable[..., Completed]


@dataclass(frozen=True)
class ComposeArgv:
    """Pure argv builders for one compose project."""

    command: tuple[str, ...]
    project: str
    file: Path

    @classmethod
    def from_settings(cls, settings: Any) -> ComposeArgv:
        """Given settings, return the builder. A relative compose file is made absolute
        against the bot's working directory, since compose runs in the file's folder."""
        return cls(
            command=tuple(settings.hq_compose_command),
            project=settings.hq_compose_project,
            file=Path(settings.hq_compose_file).absolute(),
        )

    @property
    def base(self) -> tuple[str, ...]:
        return (*self.command, "-p", self.project, "-f", str(self.file))

    def services(self) -> tuple[str, ...]:
        return (*self.base, "config", "--services")

    def ps(self, *, all: bool = True) -> tuple[str, ...]:
        return (*self.base, "ps", *(("--all",) if all else ()), "--format", "json")

    def up(
        self,
        services: Sequence[str] = (),
        *,
        no_deps: bool = False,
        force_recreate: bool = False,
        no_recreate: bool = False,
        build: bool = False,
        scale: dict[str, int] | None = None,
    ) -> tuple[str, ...]:
        if force_recreate and no_recreate:
            raise ValueError("force_recreate and no_recreate exclude each other")
        flags: list[str] = ["-d"]
        flags += ["--no-deps"] if no_deps else []
        flags += ["--force-recreate"] if force_recreate else []
        flags += ["--no-recreate"] if no_recreate else []
        flags += ["--build"] if build else []
        for service, replicas in sorted((scale or {}).items()):
            flags += ["--scale", f"{_service(service)}={int(replicas)}"]
        return (*self.base, "up", *flags, *_services(services))

    def stop(self, services: Sequence[str] = ()) -> tuple[str, ...]:
        return (*self.base, "stop", *_services(services))

    def start(self, services: Sequence[str] = ()) -> tuple[str, ...]:
        return (*self.base, "start", *_services(services))

    def restart(self, services: Sequence[str] = ()) -> tuple[str, ...]:
        return (*self.base, "restart", *_services(services))

    def logs(
        self,
        services: Sequence[str] = (),
        *,
        tail: int | None = None,
        since: str | None = None,
        timestamps: bool = False,
    ) -> tuple[str, ...]:
        flags = ["--no-color"]
        flags += [f"--tail={int(tail)}"] if tail is not None else []
        flags += [f"--since={since}"] if since else []
        flags += ["--timestamps"] if timestamps else []
        return (*self.base, "logs", *flags, *_services(services))


def _service(name: str) -> str:
    if not SERVICE.match(name):
        raise ValueError(f"{name!r} is not a compose service name")
    return name


def _services(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise TypeError("services must be a sequence of names, not a string")
    return tuple(_service(n) for n in names)


@dataclass(frozen=True)
class ComposeContainer:
    """One row of ``docker compose ps --format json``."""

    name: str
    service: str
    state: str
    health: str
    status: str
    exit_code: int
    image: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"


def parse_ps(text: str) -> list[ComposeContainer]:
    """Given ``compose ps --format json`` output (one object a line since compose 2.21, a JSON
    array before), return its containers sorted by service and name."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        items: list[Any] = json.loads(text)
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    out = [
        ComposeContainer(
            name=str(item.get("Name", "")),
            service=str(item.get("Service", "")),
            state=str(item.get("State", "")),
            health=str(item.get("Health", "") or ""),
            status=str(item.get("Status", "")),
            exit_code=int(item.get("ExitCode", 0) or 0),
            image=str(item.get("Image", "")),
        )
        for item in items
    ]
    return sorted(out, key=lambda c: (c.service, c.name))


class Compose:
    """Runs compose argv for one project through the gateway, in the compose file's folder
    (where compose also finds the ``.env``)."""

    def __init__(
        self, argv: ComposeArgv, *, timeout: float = 300.0, runner: Runner = gateway.run
    ) -> None:
        self.argv = argv
        self.timeout = timeout
        self._run = runner

    def run(self, argv: Sequence[str], *, timeout: float | None = None) -> Completed:
        """Run a compose argv built by :attr:`argv` (a planned step). Raise InfraError when it
        is not a compose argv of this project, CommandFailed/CommandTimeout when it fails."""
        words = tuple(argv)
        if words[: len(self.argv.base)] != self.argv.base:
            raise InfraError("Refusing to run an argv that is not a compose call of this project.")
        return self._run(
            words, timeout=self.timeout if timeout is None else timeout, cwd=self.argv.file.parent
        )

    def services(self) -> list[str]:
        """Return the project's service names (``config --services``), sorted."""
        out = self.run(self.argv.services(), timeout=min(self.timeout, 60.0)).text
        return sorted({line.strip() for line in out.splitlines() if line.strip()})

    def ps(self) -> list[ComposeContainer]:
        """Return every container of the project, running or not."""
        result = self.run(self.argv.ps(), timeout=min(self.timeout, 60.0))
        try:
            return parse_ps(result.text)
        except (ValueError, TypeError, AttributeError):
            raise InfraError("`docker compose ps` printed something that is not JSON.") from None

    def up(self, services: Sequence[str] = (), **flags: Any) -> Completed:
        return self.run(self.argv.up(services, **flags))

    def stop(self, services: Sequence[str] = ()) -> Completed:
        return self.run(self.argv.stop(services))

    def start(self, services: Sequence[str] = ()) -> Completed:
        return self.run(self.argv.start(services))

    def restart(self, services: Sequence[str] = ()) -> Completed:
        return self.run(self.argv.restart(services))

    def logs(
        self,
        services: Sequence[str] = (),
        *,
        tail: int | None = None,
        since: str | None = None,
        timestamps: bool = False,
    ) -> str:
        argv = self.argv.logs(services, tail=tail, since=since, timestamps=timestamps)
        return self.run(argv, timeout=min(self.timeout, 120.0)).text
