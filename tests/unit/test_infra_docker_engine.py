from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from commands.infra.docker_engine import (
    PROJECT_LABEL,
    SERVICE_LABEL,
    DockerEngine,
    cpu_percent,
    memory_used,
)
from commands.infra.gateway import CommandFailed, InfraError


def _container(name: str, service: str, state: str, status: str, number: int = 1) -> dict[str, Any]:
    return {
        "Id": f"id-{name}",
        "Names": [f"/{name}"],
        "State": state,
        "Status": status,
        "Image": "img",
        "Labels": {
            PROJECT_LABEL: "harmoniq",
            SERVICE_LABEL: service,
            "com.docker.compose.container-number": str(number),
        },
    }


class FakeApi:
    def __init__(self, exit_code: int = 0) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.exit_code = exit_code
        self.items = [
            _container("h-redis-1", "redis", "running", "Up 1 minute (healthy)"),
            _container("h-backend-2", "backend", "running", "Up 1 minute (health: starting)", 2),
            _container("h-backend-1", "backend", "running", "Up 1 minute (unhealthy)", 1),
            _container("h-coturn-1", "coturn", "exited", "Exited (0) 2 minutes ago"),
        ]

    def containers(self, all: bool, filters: dict[str, Any]) -> list[dict[str, Any]]:
        self.calls.append(("containers", filters))
        wanted = [label.split("=", 1) for label in filters["label"]]
        return [c for c in self.items if all_match(c["Labels"], wanted)]

    def exec_create(self, container: str, cmd: list[str], **kwargs: Any) -> dict[str, str]:
        self.calls.append(("exec_create", (container, cmd, kwargs)))
        return {"Id": "exec-1"}

    def exec_start(self, exec_id: str, stream: bool, demux: bool) -> Iterator[bytes]:
        self.calls.append(("exec_start", (exec_id, stream, demux)))
        return iter([b"part1", b"", b"part2"])

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        return {"Running": False, "ExitCode": self.exit_code}


def all_match(labels: dict[str, str], wanted: list[list[str]]) -> bool:
    return all(labels.get(k) == v for k, v in wanted)


class FakeClient:
    def __init__(self, api: FakeApi) -> None:
        self.api = api


def _engine(api: FakeApi) -> DockerEngine:
    return DockerEngine("harmoniq", factory=lambda: FakeClient(api))


def test_containers_are_found_by_project_and_service_labels_with_their_health() -> None:
    api = FakeApi()
    engine = _engine(api)
    found = engine.containers()
    assert [c.name for c in found] == ["h-backend-1", "h-backend-2", "h-coturn-1", "h-redis-1"]
    assert [c.health for c in found] == ["unhealthy", "starting", "", "healthy"]
    assert api.calls[0] == ("containers", {"label": [f"{PROJECT_LABEL}=harmoniq"]})
    engine.containers("redis")
    assert api.calls[1][1]["label"][1] == f"{SERVICE_LABEL}=redis"
    assert engine.health("coturn") == {"h-coturn-1": "exited"}


def test_exec_stream_yields_chunks_then_exposes_the_exit_code() -> None:
    api = FakeApi()
    stream = _engine(api).exec_stream("redis", ["redis-cli", "ping"], user="redis")
    assert stream.read() == b"part1part2" and stream.exit_code == 0
    create = next(c for c in api.calls if c[0] == "exec_create")[1]
    assert create[0] == "id-h-redis-1" and create[1] == ["redis-cli", "ping"]
    assert create[2]["user"] == "redis" and create[2]["stderr"] is False
    assert ("exec_start", ("exec-1", True, False)) in api.calls


def test_a_non_zero_exit_of_an_exec_raises_after_the_output() -> None:
    stream = _engine(FakeApi(exit_code=1)).exec_stream("redis", ["false"])
    seen: list[bytes] = []
    with pytest.raises(CommandFailed) as info:
        for chunk in stream:
            seen.append(chunk)
    assert seen == [b"part1", b"part2"] and info.value.returncode == 1
    unchecked = _engine(FakeApi(exit_code=1)).exec_stream("redis", ["false"], check=False)
    unchecked.read()
    assert unchecked.exit_code == 1


def test_exec_needs_a_running_container() -> None:
    with pytest.raises(InfraError, match="No running container for service coturn"):
        _engine(FakeApi()).exec_stream("coturn", ["true"])


def test_cpu_percent_is_computed_as_docker_stats_does() -> None:
    sample = {
        "cpu_stats": {
            "cpu_usage": {"total_usage": 2_000_000_000},
            "system_cpu_usage": 20_000_000_000,
            "online_cpus": 4,
        },
        "precpu_stats": {
            "cpu_usage": {"total_usage": 1_000_000_000},
            "system_cpu_usage": 10_000_000_000,
        },
    }
    assert cpu_percent(sample) == (pytest.approx(40.0), 4)
    assert cpu_percent({"cpu_stats": {}, "precpu_stats": {}})[0] == 0.0


def test_memory_subtracts_the_inactive_page_cache_on_cgroup_v1_and_v2() -> None:
    v2 = {"memory_stats": {"usage": 1000, "limit": 4000, "stats": {"inactive_file": 200}}}
    v1 = {"memory_stats": {"usage": 1000, "limit": 4000, "stats": {"total_inactive_file": 300}}}
    assert memory_used(v2) == (800, 4000)
    assert memory_used(v1) == (700, 4000)
    assert memory_used({}) == (0, 0)
