from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from commands import ops
from commands.infra.compose import ComposeArgv
from commands.infra.docker_engine import ContainerInfo
from commands.infra.gateway import Completed
from commands.parser import parse
from commands.redact import MASK, default_redactor
from commands.registry import REGISTRY
from commands.spec import Status, UserError
from tests.unit.command_context import Ctx

FILE = "/opt/harmoniq/docker-compose.yml"
BASE = ("docker", "compose", "-p", "harmoniq", "-f", FILE)


@pytest.fixture
def settings(make_settings: Any) -> Any:
    return make_settings(hq_compose_file=FILE)


def _plan(text: str, settings: Any) -> Any:
    parsed = parse(text, REGISTRY)
    return parsed.spec.plan(parsed.args, Ctx(settings))


# --- parsing and planning -------------------------------------------------------------------
def test_logs_plan_has_the_exact_compose_argv(settings: Any) -> None:
    plan = _plan(
        "logs Backend --tail 20 --since 10m --grep \u201cconnection refused\u201d", settings
    )
    assert plan.steps[0].argv == (
        *BASE,
        "logs",
        "--no-color",
        "--tail=20",
        "--since=10m",
        "backend",
    )
    assert plan.data["grep"] == "connection refused" and plan.targets == ("backend",)
    assert _plan("logs redis", settings).steps[0].argv == (
        *BASE,
        "logs",
        "--no-color",
        "--tail=100",
        "redis",
    )


@pytest.mark.parametrize(
    "value",
    [
        "10m",
        "2h",
        "1h30m",
        "45s",
        "2025-01-15T10:00:00",
        "2025-01-15T10:00:00Z",
        "2025-01-15T10:00:00.5+02:00",
        "2025-01-15",
    ],
)
def test_since_accepts_durations_and_rfc3339(value: str) -> None:
    assert ops.parse_since(value) == value


@pytest.mark.parametrize(
    "value", ["yesterday", "10", "10 m", "2025-13-01T00:00:00", "1h;ls", "-5m", ""]
)
def test_since_refuses_anything_else(value: str) -> None:
    with pytest.raises(ValueError):
        ops.parse_since(value)


def test_tail_is_bounded(settings: Any) -> None:
    for bad in ("0", "10001", "ten", "-1"):
        with pytest.raises(UserError) as info:
            parse(f"logs backend --tail {bad}", REGISTRY)
        assert "1 to 10000" in info.value.message and info.value.usage
    assert ops.parse_tail("10000") == 10000


def test_grep_is_a_bounded_printable_text() -> None:
    assert ops.parse_grep("ERROR [db]") == "ERROR [db]"
    with pytest.raises(ValueError):
        ops.parse_grep("x" * 201)
    with pytest.raises(ValueError):
        ops.parse_grep("a\x1bb")


def test_a_service_name_that_cannot_exist_is_refused_when_parsing() -> None:
    with pytest.raises(UserError):
        parse("logs ../etc", REGISTRY)
    with pytest.raises(UserError):
        parse("restart 'backend;reboot'", REGISTRY)


def test_restart_plan(settings: Any) -> None:
    plan = _plan("restart postgres", settings)
    assert plan.steps[0].argv == (*BASE, "restart", "postgres") and plan.targets == ("postgres",)


def test_scale_plan_is_the_backend_only_and_bounded(make_settings: Any) -> None:
    settings = make_settings(hq_compose_file=FILE, hq_scale_max=4)
    plan = _plan("scale backend 3", settings)
    assert plan.steps[-1].argv == (
        *BASE,
        "up",
        "-d",
        "--no-deps",
        "--no-recreate",
        "--scale",
        "backend=3",
        "backend",
    )
    assert plan.summary == "scale backend to 3 replicas"
    with pytest.raises(UserError, match="Only the backend"):
        _plan("scale postgres 2", settings)
    with pytest.raises(UserError, match="from 1 to 4"):
        _plan("scale backend 5", settings)
    with pytest.raises(UserError):
        parse("scale backend 0", REGISTRY)


def test_scale_plan_mentions_the_nginx_check_when_configured(make_settings: Any) -> None:
    settings = make_settings(hq_compose_file=FILE, hq_nginx_conf="/etc/nginx/nginx.conf")
    plan = _plan("scale backend 2", settings)
    assert "ip_hash" in plan.steps[0].title and not plan.steps[0].argv


def test_ps_plan(settings: Any) -> None:
    plan = _plan("ps", settings)
    assert plan.steps[1].argv == (*BASE, "ps", "--all", "--format", "json")


# --- pure helpers ---------------------------------------------------------------------------
def test_grep_filters_case_insensitively() -> None:
    text = "GET /a 200\nERROR db down\nerror again\nok\n"
    assert ops.filter_lines(text, "error") == ["ERROR db down", "error again"]
    assert ops.filter_lines(text, None) == ["GET /a 200", "ERROR db down", "error again", "ok"]


def test_short_logs_are_inline_and_long_logs_are_attached() -> None:
    data = {"tail": 100, "grep": None}
    short = ops.logs_result("backend", ["a", "b"], data, "")
    assert short.text == "```\na\nb\n```" and not short.attachments
    many = ops.logs_result("backend", [f"line {i}" for i in range(41)], data, "")
    assert many.attachments and many.attachments[0].content.count(b"\n") == 41
    assert many.attachments[0].filename.startswith("backend-logs-")
    wide = ops.logs_result("backend", ["x" * 3600], data, "")
    assert wide.attachments
    empty = ops.logs_result("backend", [], {"tail": 100, "grep": "zzz"}, "")
    assert empty.text.startswith("No log lines") and "containing 'zzz'" in empty.title


def test_nginx_upstream_with_and_without_ip_hash(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text("http {\n upstream backend {\n  ip_hash;\n  server backend:4000;\n }\n}\n")
    assert ops.nginx_row(conf, "backend", 3).status == Status.OK
    conf.write_text("upstream backend {\n  # ip_hash;\n  server backend:4000;\n}\n")
    row = ops.nginx_row(conf, "backend", 3)
    assert row.status == Status.WARN and "ip_hash" in row.detail
    conf.write_text("server { listen 80; }\n")
    assert "no upstream block" in ops.nginx_row(conf, "backend", 2).detail
    assert ops.nginx_row(tmp_path / "missing.conf", "backend", 2).status == Status.WARN
    assert ops.nginx_row(None, "backend", 2).status == Status.UNKNOWN


def test_logging_report_without_rotation_gives_the_json_to_add() -> None:
    rows, wanted = ops.logging_report({"data-root": "/srv/docker"}, "json-file", [])
    assert wanted == {
        "data-root": "/srv/docker",
        "log-driver": "json-file",
        "log-opts": {"max-size": "50m", "max-file": "5"},
    }
    assert [r.status for r in rows] == [Status.OK, Status.FAIL, Status.FAIL]


def test_logging_report_keeps_existing_options_and_flags_old_containers() -> None:
    config = {"log-driver": "json-file", "log-opts": {"max-size": "20m", "max-file": "3"}}
    containers = [
        ("h-backend-1", {"Type": "json-file", "Config": {}}),
        ("h-redis-1", {"Type": "json-file", "Config": {"max-size": "20m", "max-file": "3"}}),
    ]
    rows, wanted = ops.logging_report(config, "json-file", containers)
    assert wanted is None
    by = {r.name: r for r in rows}
    assert by["container h-backend-1"].status == Status.WARN
    assert by["container h-redis-1"].status == Status.OK
    rows, wanted = ops.logging_report({"log-opts": {"max-size": "20m"}}, "json-file", [])
    assert wanted is not None and wanted["log-opts"] == {"max-size": "20m", "max-file": "5"}


def test_daemon_json_that_is_missing_or_broken(tmp_path: Path) -> None:
    assert ops.read_daemon_json(tmp_path / "daemon.json")[0] == {}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        ops.read_daemon_json(bad)


# --- execute with fakes ---------------------------------------------------------------------
class FakeCompose:
    def __init__(self, output: str = "", stderr: str = "") -> None:
        self.output = output
        self.stderr = stderr
        self.ran: list[tuple[str, ...]] = []
        self.argv = ComposeArgv(("docker", "compose"), "harmoniq", Path(FILE))

    def services(self) -> list[str]:
        return ["backend", "postgres", "redis"]

    def run(self, argv: tuple[str, ...], **kwargs: Any) -> Completed:
        self.ran.append(tuple(argv))
        return Completed(tuple(argv), 0, self.output.encode(), self.stderr.encode(), 0.0)


class FakeEnv:
    def read(self) -> dict[str, str]:
        default_redactor().add(["logs-db-password-9"])
        return {"DB_PASSWORD": "logs-db-password-9"}


class FakeDocker:
    def __init__(self, containers: list[ContainerInfo]) -> None:
        self.list = containers

    def containers(self, service: str | None = None) -> list[ContainerInfo]:
        return [c for c in self.list if service in (None, c.service)]


@dataclass
class FakeInfra:
    compose: Any
    env: Any = field(default_factory=FakeEnv)
    docker: Any = None


def test_logs_of_an_unknown_service_list_the_valid_names(settings: Any) -> None:
    ctx = Ctx(settings, FakeInfra(FakeCompose()))
    plan = _plan("logs nginx", settings)
    with pytest.raises(UserError) as info:
        ops._logs_execute(plan, ctx, lambda _l: None)
    assert "`nginx` is not a service" in info.value.message
    assert "`backend`, `postgres`, `redis`" in info.value.message
    assert ctx.infra.compose.ran == []


def test_logs_are_filtered_redacted_and_run_with_the_planned_argv(settings: Any) -> None:
    out = "backend-1 | ok\nbackend-1 | ERROR login with logs-db-password-9\nbackend-1 | error 2\n"
    compose = FakeCompose(out, "WARN compose's own warning, not a log line: error\n")
    ctx = Ctx(settings, FakeInfra(compose))
    plan = _plan("logs backend --grep error", settings)
    result = ops._logs_execute(plan, ctx, lambda _l: None)
    assert compose.ran == [plan.steps[0].argv]
    assert "logs-db-password-9" not in result.text and MASK in result.text
    assert "error 2" in result.text and "| ok" not in result.text and "WARN" not in result.text
    assert result.title.startswith("Logs of backend: 2 lines containing 'error'")


def test_restart_runs_the_plan_and_reports_the_containers(settings: Any, monkeypatch: Any) -> None:
    compose = FakeCompose()
    docker = FakeDocker([ContainerInfo("i", "h-redis-1", "redis", "running", "healthy", "img")])
    ctx = Ctx(settings, FakeInfra(compose, docker=docker))
    plan = _plan("restart redis", settings)
    result = ops._restart_execute(plan, ctx, lambda _l: None)
    assert compose.ran == [(*BASE, "restart", "redis")]
    assert result.ok and result.title.startswith("Restarted redis")
    assert "does not re-read `.env`" in result.text


def test_scale_reports_replicas_and_the_nginx_check(make_settings: Any, tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text("upstream backend { server backend:4000; }")
    settings = make_settings(hq_compose_file=FILE, hq_nginx_conf=conf)
    compose = FakeCompose()
    docker = FakeDocker(
        [
            ContainerInfo("1", "h-backend-1", "backend", "running", "healthy", "img", 1),
            ContainerInfo("2", "h-backend-2", "backend", "running", "healthy", "img", 2),
        ]
    )
    ctx = Ctx(settings, FakeInfra(compose, docker=docker))
    result = ops._scale_execute(_plan("scale backend 2", settings), ctx, lambda _l: None)
    assert result.ok and compose.ran[-1][-3:] == ("--scale", "backend=2", "backend")
    assert result.rows[0].name == "nginx sticky sessions" and result.rows[0].status == Status.WARN


def test_ps_rows_and_missing_services(settings: Any) -> None:
    lines = [
        {
            "Name": "h-backend-1",
            "Service": "backend",
            "State": "running",
            "Health": "healthy",
            "Status": "Up",
        },
        {
            "Name": "h-redis-1",
            "Service": "redis",
            "State": "exited",
            "Health": "",
            "Status": "Exited (1)",
        },
    ]
    compose = FakeCompose("\n".join(json.dumps(x) for x in lines))
    result = ops._ps_execute(_plan("ps", settings), Ctx(settings, FakeInfra(compose)), print)
    statuses = {r.name: r.status for r in result.rows}
    assert statuses == {
        "h-backend-1": Status.OK,
        "h-redis-1": Status.FAIL,
        "postgres (service)": Status.FAIL,
    }
    assert not result.ok and result.title.startswith("1 of 2 containers running")
