from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from commands import metrics, redis_cmds
from commands.infra import Infra
from commands.infra.docker_engine import ContainerInfo, ContainerStats
from commands.infra.gateway import InfraError
from commands.infra.postgres import ConnectionUsage
from commands.infra.redis_client import RedisMemory
from commands.spec import Result, Row, Status
from tests.unit.command_context import Ctx
from tests.unit.infra_servers import http_server, self_signed, silent_server, tls_server

NOW = dt.datetime(2025, 1, 15, tzinfo=dt.UTC)


# --- redis memory ---------------------------------------------------------------------------
def test_redis_memory_row_warns_at_80_percent() -> None:
    mib = 1024 * 1024
    ok = redis_cmds.redis_memory_row(RedisMemory(100 * mib, 256 * mib, "allkeys-lru", "100M"), 80)
    assert ok.status == Status.OK and "(39.1 %)" in ok.detail and "allkeys-lru" in ok.detail
    high = redis_cmds.redis_memory_row(RedisMemory(210 * mib, 256 * mib, "allkeys-lru"), 80)
    assert high.status == Status.WARN and "raise maxmemory" in high.detail


def test_redis_maxmemory_zero_is_explained_as_no_limit() -> None:
    row = redis_cmds.redis_memory_row(RedisMemory(5000, 0, "noeviction", "4.88K"), 80)
    assert row.status == Status.UNKNOWN and "maxmemory is 0, which means no limit" in row.detail


class FakeRedis:
    def __init__(self, memory: RedisMemory) -> None:
        self._memory = memory

    def memory(self) -> RedisMemory:
        return self._memory


@dataclass
class RedisInfra:
    redis: Any


def test_redis_memory_command(make_settings: Any) -> None:
    ctx = Ctx(make_settings(), RedisInfra(FakeRedis(RedisMemory(900, 1000, "allkeys-lru"))))
    plan = redis_cmds._plan({}, ctx)
    result = redis_cmds._execute(plan, ctx, lambda _l: None)
    assert result.ok and result.title == "Redis memory is above 80 % of maxmemory"
    assert result.rows[0].status == Status.WARN


# --- rows -----------------------------------------------------------------------------------
def test_postgres_connections_against_usable_max_connections() -> None:
    row = metrics.pg_row(ConnectionUsage(clients=80, max_connections=100, reserved=3), 80)
    assert row.status == Status.WARN and "80 client connections of 97 usable" in row.detail
    assert metrics.pg_row(ConnectionUsage(5, 100, 3), 80).status == Status.OK


def test_container_row_checks_cpu_and_memory_thresholds() -> None:
    calm = ContainerStats("h-backend-1", "backend", 12.0, 100, 1000, 4)
    assert metrics.container_row(calm, 80, 90).status == Status.OK
    hot = ContainerStats("h-backend-1", "backend", 95.0, 950, 1000, 4)
    row = metrics.container_row(hot, 80, 90)
    assert row.status == Status.WARN and row.detail.startswith("CPU and memory above threshold")


def test_tls_rows() -> None:
    soon = NOW + dt.timedelta(days=5)
    assert metrics.tls_row("a:443", soon, 14, NOW).status == Status.WARN
    assert metrics.tls_row("a:443", NOW + dt.timedelta(days=60), 14, NOW).status == Status.OK
    expired = metrics.tls_row("a:443", NOW - dt.timedelta(days=1), 14, NOW)
    assert expired.status == Status.FAIL and "expired" in expired.detail


def test_latency_and_websocket_rows() -> None:
    assert metrics.latency_row(0.2, 500).status == Status.OK
    assert metrics.latency_row(0.75, 500) == Row(
        "HTTP latency p95", Status.WARN, "750 ms; alert above 500 ms"
    )
    assert metrics.latency_row(None, 500).status == Status.UNKNOWN
    assert metrics.websocket_row(900, 1000, 80).status == Status.WARN
    assert metrics.websocket_row(100, 1000, 80).status == Status.OK
    assert "HQ_WS_CAPACITY" in metrics.websocket_row(100, None, 80).detail


# --- the whole table, with fakes and local servers ------------------------------------------
class FakePostgres:
    def connection_usage(self) -> ConnectionUsage:
        return ConnectionUsage(10, 100, 3)


class FakeDocker:
    def containers(self) -> list[ContainerInfo]:
        return [
            ContainerInfo("1", "h-backend-1", "backend", "running", "healthy", "img"),
            ContainerInfo("2", "h-coturn-1", "coturn", "exited", "", "img"),
        ]

    def container_stats(self, info: ContainerInfo) -> ContainerStats:
        return ContainerStats(info.name, info.service, 3.0, 100, 1000, 2)


class MetricsInfra(Infra):
    """The real Infra (Prometheus over HTTP, TLS) with fake PostgreSQL, Redis and Docker."""

    @property
    def postgres(self) -> Any:  # type: ignore[override]
        return FakePostgres()

    @property
    def redis(self) -> Any:  # type: ignore[override]
        return FakeRedis(RedisMemory(10, 100, "allkeys-lru"))

    @property
    def docker(self) -> Any:  # type: ignore[override]
        return FakeDocker()


def _run_metrics(infra: MetricsInfra) -> Result:
    """Plan and run ``/hq metrics`` on ``infra`` and its settings."""
    ctx = Ctx(infra.settings, infra)
    return metrics._execute(metrics._plan({}, ctx), ctx, lambda _l: None)


def _prometheus(path: str) -> tuple[int, Any]:
    value = "0.734" if "latency" in path or "duration" in path else "850"
    return 200, {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, value]}]},
    }


def test_metrics_table_with_prometheus_and_tls(make_settings: Any, tmp_path: Path) -> None:
    cert, key, _ = self_signed(tmp_path, days=7)
    with http_server(_prometheus) as prom, tls_server(cert, key) as port:
        settings = make_settings(
            hq_prometheus_url=prom,
            hq_ws_capacity=1000,
            hq_tls_endpoints=f"127.0.0.1:{port}",
            hq_docker_root=tmp_path,
            hq_backup_dir=tmp_path,
        )
        result = _run_metrics(MetricsInfra(settings))
    by = {r.name: r for r in result.rows}
    assert by["HTTP latency p95"] == Row(
        "HTTP latency p95",
        Status.WARN,
        "734 ms; alert above 500 ms",
        by["HTTP latency p95"].seconds,
    )
    assert by["WebSocket connections"].status == Status.WARN
    assert "850 of 1000 (85.0 %)" in by["WebSocket connections"].detail
    assert by["PostgreSQL connections"].status == Status.OK
    assert by["Redis memory"].status == Status.OK
    assert by["CPU / memory h-backend-1"].status == Status.OK
    assert "CPU / memory h-coturn-1" not in by
    tls = by[f"TLS 127.0.0.1:{port}"]
    assert tls.status == Status.WARN and "in 7 days" in tls.detail
    assert result.ok and "3 above threshold" in result.title
    assert all(r.seconds is not None for r in result.rows)


def test_metrics_without_prometheus_say_not_configured(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(hq_docker_root=tmp_path, hq_backup_dir=tmp_path)
    result = _run_metrics(MetricsInfra(settings))
    by = {r.name: r for r in result.rows}
    assert by["HTTP latency p95"] == Row(
        "HTTP latency p95",
        Status.UNKNOWN,
        "not configured (set HQ_PROMETHEUS_URL)",
        by["HTTP latency p95"].seconds,
    )
    assert by["TLS certificates"].status == Status.UNKNOWN
    assert result.ok and result.title.startswith("Key metrics: all within thresholds")


def test_a_silent_tls_endpoint_fails_within_the_timeout(make_settings: Any, tmp_path: Path) -> None:
    with silent_server() as port:
        settings = make_settings(
            hq_tls_endpoints=f"127.0.0.1:{port}",
            hq_health_timeout=0.5,
            hq_docker_root=tmp_path,
            hq_backup_dir=tmp_path,
        )
        result = _run_metrics(MetricsInfra(settings))
    row = next(r for r in result.rows if r.name.startswith("TLS"))
    assert row.status == Status.FAIL and not result.ok


def test_an_unreadable_metric_is_a_failure_not_a_crash(make_settings: Any, tmp_path: Path) -> None:
    class Down(MetricsInfra):
        @property
        def postgres(self) -> Any:  # type: ignore[override]
            class P:
                def connection_usage(self) -> ConnectionUsage:
                    raise InfraError("PostgreSQL at 127.0.0.1:5432: Connection refused.")

            return P()

    settings = make_settings(hq_docker_root=tmp_path, hq_backup_dir=tmp_path)
    result = _run_metrics(Down(settings))
    assert not result.ok and result.data["failed"] == ["PostgreSQL connections"]
