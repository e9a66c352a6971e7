from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from commands import health
from commands.health import (
    Check,
    backend_rows,
    container_rows,
    disk_row,
    run_checks,
    verdict_result,
    worst,
)
from commands.infra.docker_engine import ContainerInfo
from commands.infra.gateway import InfraError
from commands.infra.http import Http, Response
from commands.redact import MASK, default_redactor
from commands.spec import Row, Status
from tests.unit.command_context import Ctx


def _c(name: str, service: str, state: str = "running", health_: str = "") -> ContainerInfo:
    return ContainerInfo(f"id-{name}", name, service, state, health_, "img")


def test_the_verdict_is_the_worst_status() -> None:
    assert worst([Status.OK, Status.UNKNOWN]) == Status.UNKNOWN
    assert worst([Status.OK, Status.WARN, Status.UNKNOWN]) == Status.WARN
    assert worst([Status.WARN, Status.FAIL, Status.OK]) == Status.FAIL
    assert worst([]) == Status.OK


def test_checks_run_in_parallel_and_each_row_carries_its_time() -> None:
    def slow() -> Row:
        time.sleep(0.3)
        return Row("slow", Status.OK, "done")

    started = time.monotonic()
    rows = run_checks([Check("a", slow), Check("b", slow), Check("c", slow)], timeout=5)
    assert time.monotonic() - started < 0.8
    assert [r.status for r in rows] == [Status.OK] * 3
    assert all(r.seconds is not None and r.seconds >= 0.3 for r in rows)


def test_a_stuck_check_fails_at_the_timeout_and_the_round_does_not_wait_for_it() -> None:
    release = threading.Event()

    def stuck() -> Row:
        release.wait(30)
        return Row("stuck", Status.OK)

    started = time.monotonic()
    rows = run_checks([Check("stuck", stuck), Check("quick", lambda: Row("quick", Status.OK))], 0.3)
    elapsed = time.monotonic() - started
    release.set()
    assert elapsed < 1.0
    assert rows[0] == Row("stuck", Status.FAIL, "timed out after 0.3 s", 0.3)
    assert rows[1].status == Status.OK


def test_a_user_error_becomes_a_fail_row_and_a_crash_hides_its_text() -> None:
    def infra() -> Row:
        raise InfraError("Redis at 127.0.0.1:6379/0 is unreachable (PING).")

    def crash() -> Row:
        raise RuntimeError("secret-ish internals")

    rows = run_checks([Check("redis", infra), Check("boom", crash)], timeout=5)
    assert rows[0].status == Status.FAIL and "unreachable" in rows[0].detail
    assert rows[1].status == Status.FAIL and "secret-ish" not in rows[1].detail
    assert "RuntimeError" in rows[1].detail


def test_row_details_are_redacted() -> None:
    default_redactor().add(["check-secret-123"])
    rows = run_checks([Check("x", lambda: Row("x", Status.FAIL, "saw check-secret-123"))], 5)
    assert rows[0].detail == f"saw {MASK}"


def test_a_check_may_return_several_rows() -> None:
    rows = run_checks([Check("many", lambda: [Row("x", Status.OK), Row("y", Status.WARN)])], 5)
    assert [r.name for r in rows] == ["x", "y"]


def test_container_rows_per_service() -> None:
    containers = [
        _c("h-postgres-1", "postgres", health_="healthy"),
        _c("h-redis-1", "redis", health_="unhealthy"),
        _c("h-backend-1", "backend", health_="healthy"),
        _c("h-backend-2", "backend", state="exited"),
        _c("h-minio-1", "minio", health_="starting"),
        _c("h-coturn-1", "coturn"),
    ]
    rows = container_rows(["backend", "coturn", "minio", "nginx", "postgres", "redis"], containers)
    by = {r.name: r for r in rows}
    assert by["container backend"].status == Status.FAIL
    assert (
        "1/2 running" in by["container backend"].detail
        and "exited" in by["container backend"].detail
    )
    assert by["container coturn"] == Row("container coturn", Status.OK, "running (no health check)")
    assert by["container minio"].status == Status.WARN
    assert (
        by["container nginx"].status == Status.FAIL
        and "no container" in by["container nginx"].detail
    )
    assert by["container postgres"] == Row("container postgres", Status.OK, "running, healthy")
    assert (
        by["container redis"].status == Status.FAIL and "unhealthy" in by["container redis"].detail
    )


def test_backend_health_reports_its_sub_checks() -> None:
    body = {
        "status": "degraded",
        "postgres": {"ok": True, "detail": "SELECT 1 ok"},
        "redis": {"ok": False, "detail": "Connection refused"},
    }
    rows = backend_rows(503, body, None)
    assert rows[0].name == "backend /health" and rows[0].status == Status.FAIL
    assert "HTTP 503" in rows[0].detail
    assert rows[1] == Row("backend /health: postgres", Status.OK, "SELECT 1 ok")
    assert rows[2] == Row("backend /health: redis", Status.FAIL, "Connection refused")


def test_backend_jwt_fingerprint_is_compared_with_the_env_file() -> None:
    secret = "jwt-secret-for-test"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    same = backend_rows(
        200, {"status": "ok", "jwt_secret_fingerprint": f"sha256:{digest[:12]}"}, secret
    )
    assert same[0].status == Status.OK and "matches .env" in same[0].detail
    other = backend_rows(
        200, {"status": "ok", "jwt_secret_fingerprint": "sha256:0123456789ab"}, secret
    )
    assert other[0].status == Status.WARN and "differs" in other[0].detail


def test_backend_health_that_is_not_json_fails() -> None:
    assert backend_rows(200, None, None)[0].status == Status.FAIL


def test_disk_row_warns_at_the_threshold_and_fails_when_missing(tmp_path: Path) -> None:
    assert disk_row("disk", tmp_path, 100.0).status == Status.OK
    assert disk_row("disk", tmp_path, 0.001).status == Status.WARN
    missing = disk_row("disk", tmp_path / "nope", 85)
    assert missing.status == Status.FAIL and "does not exist" in missing.detail


def test_the_health_plan_is_pure_and_names_the_compose_argv(make_settings: Any) -> None:
    settings = make_settings(hq_compose_file="/opt/harmoniq/docker-compose.yml")
    plan = health._plan({}, Ctx(settings))
    assert plan.steps[0].argv == (
        "docker",
        "compose",
        "-p",
        "harmoniq",
        "-f",
        "/opt/harmoniq/docker-compose.yml",
        "config",
        "--services",
    )
    assert plan.data == {"timeout": 5.0}


class FakeCompose:
    def services(self) -> list[str]:
        return ["backend", "postgres", "redis"]


class FakeDocker:
    def containers(self) -> list[ContainerInfo]:
        return [
            _c("h-backend-1", "backend", health_="healthy"),
            _c("h-postgres-1", "postgres", health_="healthy"),
            _c("h-redis-1", "redis", health_="healthy"),
        ]


class FakeHttp(Http):
    def get(self, url: str, **kwargs: Any) -> Response:
        body = b'{"status": "ok", "postgres": {"ok": true}, "redis": {"ok": true}}'
        return Response(url, 200, body, {}, 0.01)


class FakeEnv:
    def read(self) -> dict[str, str]:
        return {"JWT_SECRET": "x" * 20}


class Fine:
    def ping(self) -> str:
        return "15.8"

    def live(self, http: Any) -> tuple[bool, str]:
        return True, "/minio/health/live answered 200"


class DownRedis:
    def ping(self) -> bool:
        raise InfraError("Redis at 127.0.0.1:6379/0 is unreachable (PING).")


@dataclass
class FakeInfra:
    compose: Any = field(default_factory=FakeCompose)
    docker: Any = field(default_factory=FakeDocker)
    http: Any = field(default_factory=FakeHttp)
    env: Any = field(default_factory=FakeEnv)
    postgres: Any = field(default_factory=Fine)
    redis: Any = field(default_factory=Fine)
    s3: Any = field(default_factory=Fine)


def test_health_execute_reports_every_check_and_fails_on_one_failure(
    make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings(hq_docker_root=tmp_path, hq_backup_dir=tmp_path)
    ctx = Ctx(settings, FakeInfra())
    result = health._execute(health._plan({}, ctx), ctx, lambda _l: None)
    names = [r.name for r in result.rows]
    assert names == [
        "container backend",
        "container postgres",
        "container redis",
        "backend /health",
        "backend /health: postgres",
        "backend /health: redis",
        "postgres",
        "redis",
        "minio",
        "disk docker root",
        "disk backups",
    ]
    assert result.ok and result.data["verdict"] == "ok"
    ctx = Ctx(settings, FakeInfra(redis=DownRedis()))
    result = health._execute(health._plan({}, ctx), ctx, lambda _l: None)
    assert not result.ok and result.data["failed"] == ["redis"]
    assert "1 of 11 checks failed" in result.title


def test_verdict_titles() -> None:
    assert verdict_result("H", [Row("a", Status.WARN)], 0.1).ok
    assert "warnings" in verdict_result("H", [Row("a", Status.WARN)], 0.1).title
    assert not verdict_result("H", [Row("a", Status.FAIL)], 0.1).ok


@pytest.mark.parametrize("word", ["ok", "healthy", "pass"])
def test_healthy_words(word: str) -> None:
    assert backend_rows(200, {"status": word}, None)[0].status == Status.OK
