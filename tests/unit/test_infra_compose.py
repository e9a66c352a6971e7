from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from commands.infra.compose import Compose, ComposeArgv, parse_ps
from commands.infra.gateway import Completed, InfraError

ARGV = ComposeArgv(("docker", "compose"), "harmoniq", Path("/opt/harmoniq/docker-compose.yml"))
BASE = ("docker", "compose", "-p", "harmoniq", "-f", "/opt/harmoniq/docker-compose.yml")


def test_every_argv_starts_with_the_command_project_and_file() -> None:
    assert ARGV.services() == (*BASE, "config", "--services")
    assert ARGV.ps() == (*BASE, "ps", "--all", "--format", "json")


def test_up_flags_for_a_secret_rotation_and_a_scale() -> None:
    assert ARGV.up(["backend"], no_deps=True, force_recreate=True) == (
        *BASE,
        "up",
        "-d",
        "--no-deps",
        "--force-recreate",
        "backend",
    )
    assert ARGV.up(["backend"], no_deps=True, no_recreate=True, scale={"backend": 3}) == (
        *BASE,
        "up",
        "-d",
        "--no-deps",
        "--no-recreate",
        "--scale",
        "backend=3",
        "backend",
    )
    assert ARGV.up(["backend"], build=True) == (*BASE, "up", "-d", "--build", "backend")
    with pytest.raises(ValueError):
        ARGV.up(force_recreate=True, no_recreate=True)


def test_stop_start_restart_and_logs() -> None:
    assert ARGV.stop(["backend"]) == (*BASE, "stop", "backend")
    assert ARGV.start(["backend"]) == (*BASE, "start", "backend")
    assert ARGV.restart(["redis"]) == (*BASE, "restart", "redis")
    assert ARGV.logs(["backend"], tail=50, since="10m", timestamps=True) == (
        *BASE,
        "logs",
        "--no-color",
        "--tail=50",
        "--since=10m",
        "--timestamps",
        "backend",
    )


def test_a_bad_service_name_never_reaches_an_argv() -> None:
    with pytest.raises(ValueError):
        ARGV.restart(["backend; rm -rf /"])
    with pytest.raises(TypeError):
        ARGV.restart("backend")


def test_ps_json_lines_and_the_older_array_are_both_read() -> None:
    rows = [
        {
            "Name": "h-redis-1",
            "Service": "redis",
            "State": "running",
            "Health": "healthy",
            "Status": "Up 2 minutes (healthy)",
            "ExitCode": 0,
        },
        {
            "Name": "h-backend-1",
            "Service": "backend",
            "State": "exited",
            "Health": "",
            "Status": "Exited (1)",
            "ExitCode": 1,
        },
    ]
    lines = "\n".join(json.dumps(r) for r in rows)
    for text in (lines, json.dumps(rows)):
        parsed = parse_ps(text)
        assert [c.service for c in parsed] == ["backend", "redis"]
        assert parsed[0].exit_code == 1 and not parsed[0].running
        assert parsed[1].health == "healthy" and parsed[1].running
    assert parse_ps("") == []


class Recorder:
    def __init__(self, stdout: bytes = b"") -> None:
        self.calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        self.stdout = stdout

    def __call__(self, argv: tuple[str, ...], **kwargs: Any) -> Completed:
        self.calls.append((argv, kwargs))
        return Completed(argv, 0, self.stdout, b"", 0.0)


def test_the_client_runs_in_the_compose_folder_and_parses_services() -> None:
    runner = Recorder(b"redis\nbackend\n\n")
    compose = Compose(ARGV, runner=runner)
    assert compose.services() == ["backend", "redis"]
    argv, kwargs = runner.calls[0]
    assert argv == ARGV.services() and kwargs["cwd"] == Path("/opt/harmoniq")


def test_the_client_refuses_an_argv_of_another_project() -> None:
    compose = Compose(ARGV, runner=Recorder())
    with pytest.raises(InfraError):
        compose.run(("docker", "compose", "-p", "other", "-f", "/x.yml", "down"))
    with pytest.raises(InfraError):
        compose.run(("rm", "-rf", "/"))
