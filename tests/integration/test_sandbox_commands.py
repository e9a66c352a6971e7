"""Every read-only command of issue 3, end to end through the console door against the
sandbox: parse, policy, plan, execute on the worker pool, render."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from commands.infra.http import Http
from tests.integration.conftest import (
    PROJECT,
    SERVICES,
    container_of,
    docker,
    run_console,
    wait_healthy,
)
from tests.unit.infra_servers import silent_server

pytestmark = pytest.mark.integration


def test_health_on_a_healthy_sandbox_passes_every_check(make_bot: Any) -> None:
    code, out = run_console(make_bot(), "/hq health")
    assert code == 0, out
    assert "Harmoniq is healthy" in out
    for service in SERVICES:
        assert f"OK      container {service}: running, healthy" in out
    for line in (
        "OK      backend /health: HTTP 200, status ok; JWT secret matches .env",
        "OK      backend /health: postgres",
        "OK      backend /health: redis",
        "OK      postgres: accepting connections",
        "OK      redis: PONG",
        "OK      minio: /minio/health/live answered 200",
        "disk docker root",
        "disk backups",
    ):
        assert line in out, out


def test_health_with_redis_stopped_fails_within_the_timeout(make_bot: Any) -> None:
    bot = make_bot(hq_health_timeout=3)
    redis = container_of("redis")
    docker("stop", "-t", "5", redis)
    try:
        started = time.monotonic()
        code, out = run_console(bot, "/hq health")
        elapsed = time.monotonic() - started
    finally:
        docker("start", redis)
    assert code == 1 and "Harmoniq is failing" in out, out
    assert "FAIL    redis: Redis at 127.0.0.1:56379/0 is unreachable (PING)" in out
    assert "FAIL    backend /health: redis" in out
    assert "FAIL    container redis" in out
    assert "OK      postgres" in out
    assert elapsed < 3 + 2.5, f"the round took {elapsed:.1f} s"
    wait_healthy(90)


def test_a_port_that_accepts_and_never_answers_does_not_hold_the_round(make_bot: Any) -> None:
    with silent_server() as port:
        bot = make_bot(
            hq_health_timeout=1,
            hq_postgres_port=port,
            hq_backend_url=f"http://127.0.0.1:{port}",
            hq_redis_url=f"redis://127.0.0.1:{port}/0",
            hq_s3_endpoint=f"http://127.0.0.1:{port}",
        )
        started = time.monotonic()
        code, out = run_console(bot, "/hq health")
        elapsed = time.monotonic() - started
    assert code == 1
    assert "FAIL    postgres: timed out after 1 s" in out, out
    assert "FAIL    backend /health" in out and "FAIL    minio" in out and "FAIL    redis" in out
    assert elapsed < 1.9, f"the round took {elapsed:.2f} s"


def test_ps_lists_every_container(make_bot: Any) -> None:
    code, out = run_console(make_bot(), "/hq ps")
    assert code == 0, out
    assert f"5 of 5 containers running in {PROJECT}" in out
    for service in SERVICES:
        assert f"OK      {container_of(service)}: running, healthy" in out


def test_logs_inline_with_tail_since_and_grep(make_bot: Any) -> None:
    bot = make_bot()
    marker = f"hq-marker-{uuid.uuid4().hex[:8]}"
    Http().get(f"{bot.settings.hq_backend_url}/{marker}", timeout=5)
    code, out = run_console(bot, f"/hq logs backend --tail 200 --since 5m --grep {marker.upper()}")
    assert code == 0, out
    assert "Logs of backend: 1 line containing" in out and marker in out
    code, out = run_console(bot, "/hq logs postgres --tail 3")
    assert code == 0 and "Logs of postgres: 3 lines" in out, out


def test_long_logs_come_as_an_attachment_and_are_redacted(make_bot: Any) -> None:
    bot = make_bot()
    secret = bot.infra.env.read()["JWT_SECRET"]
    marker = f"hq-long-{uuid.uuid4().hex[:8]}"
    http = Http()
    for number in range(45):
        http.get(f"{bot.settings.hq_backend_url}/{marker}-{number}", timeout=5)
    http.get(f"{bot.settings.hq_backend_url}/{marker}-{secret}", timeout=5)
    code, out = run_console(bot, f"/hq logs backend --tail 500 --grep {marker}")
    assert code == 0, out
    assert "Logs of backend: 46 lines" in out and "attached as backend-logs-" in out
    assert "(attachment backend-logs-" in out and f"{marker}-44" in out
    assert secret not in out and f"{marker}-[redacted]" in out


def test_logs_of_an_unknown_service_lists_the_valid_names(make_bot: Any) -> None:
    code, out = run_console(make_bot(), "/hq logs nginx")
    assert code == 1
    assert "nginx is not a service of this deployment" in out
    assert "backend, coturn, minio, postgres, redis" in out


def test_bad_options_get_the_usage_line(make_bot: Any) -> None:
    code, out = run_console(make_bot(), "/hq logs backend --tail 0\n/hq logs backend --since soon")
    assert code == 1
    assert out.count("Usage: /hq logs SERVICE [--tail N] [--since T] [--grep PATTERN]") == 2


def test_restart_a_service_and_wait_until_healthy(make_bot: Any) -> None:
    bot = make_bot()
    coturn = container_of("coturn")
    before = docker("inspect", "-f", "{{.State.StartedAt}}", coturn)
    code, out = run_console(bot, "/hq restart coturn")
    assert code == 0, out
    assert "Restarted coturn" in out and "does not re-read .env" in out
    assert f"OK      {coturn}: running, healthy" in out
    assert docker("inspect", "-f", "{{.State.StartedAt}}", coturn) != before


def test_scale_the_backend_to_one_replica_and_refuse_other_services(make_bot: Any) -> None:
    bot = make_bot()
    code, out = run_console(bot, "/hq scale backend 1")
    assert code == 0, out
    assert "backend scaled to 1 (1 running and healthy" in out
    assert "UNKNOWN nginx sticky sessions: not checked: HQ_NGINX_CONF is not set" in out
    code, out = run_console(bot, "/hq scale redis 2\n/hq scale backend 11")
    assert "Only the backend (backend) can be scaled" in out
    assert "Replicas must be from 1 to 10 (HQ_SCALE_MAX); got 11." in out


def test_redis_memory_against_maxmemory(make_bot: Any) -> None:
    code, out = run_console(make_bot(), "/hq redis memory")
    assert code == 0, out
    assert "Redis uses" in out and "of maxmemory" in out
    assert "of 256.0 MiB" in out and "policy allkeys-lru; alert above 80 %" in out


def test_metrics_table(make_bot: Any) -> None:
    code, out = run_console(make_bot(), "/hq metrics")
    assert code == 0, out
    assert "UNKNOWN HTTP latency p95: not configured (set HQ_PROMETHEUS_URL)" in out
    assert "OK      PostgreSQL connections:" in out and "usable (max_connections" in out
    assert "OK      Redis memory:" in out
    for service in SERVICES:
        assert f"CPU / memory {container_of(service)}: CPU" in out
    assert "UNKNOWN TLS certificates: not configured (set HQ_TLS_ENDPOINTS)" in out


def test_check_logging_reports_the_daemon_and_each_container(make_bot: Any, tmp_path: Any) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text('{"data-root": "/var/lib/docker"}')
    code, out = run_console(make_bot(hq_docker_daemon_json=daemon), "/hq check logging")
    assert code == 1
    assert "Docker log rotation is not configured as the guide says" in out
    assert '"max-size": "50m"' in out and '"data-root": "/var/lib/docker"' in out
    assert "FAIL    log-opts max-size: missing" in out
    for service in SERVICES:
        assert (
            f"OK      container {container_of(service)}: json-file (max-file=3, max-size=10m)"
            in out
        )
    daemon.write_text(
        '{"log-driver": "json-file", "log-opts": {"max-size": "50m", "max-file": "5"}}'
    )
    code, out = run_console(make_bot(hq_docker_daemon_json=daemon), "/hq check logging")
    assert code == 0 and "Docker log rotation is configured" in out, out


def test_dry_run_shows_the_plan_with_its_argv_and_runs_nothing(make_bot: Any) -> None:
    code, out = run_console(make_bot(), "/hq restart redis --dry-run")
    assert code == 0 and "Dry run, nothing was done" in out and "restart redis" in out
