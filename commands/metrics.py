"""``/hq metrics``: the guide's Key Metrics table, each metric with value, threshold and status.

A metric above its alert threshold is WARN; one that could not be read is FAIL; one whose source
is not configured (Prometheus, the WebSocket capacity, TLS endpoints) is UNKNOWN and says which
setting to set. The readings run in parallel with the health checks' per-check timeout.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from commands.health import Check, disk_row, human_bytes, run_checks, worst
from commands.infra.postgres import ConnectionUsage
from commands.redis_cmds import redis_memory_row
from commands.spec import CommandSpec, Context, Plan, Progress, Result, Row, Status, Step

LATENCY = "HTTP latency p95"
WEBSOCKETS = "WebSocket connections"
PG_CONNECTIONS = "PostgreSQL connections"
REDIS_MEMORY = "Redis memory"


def pg_row(usage: ConnectionUsage, threshold: float) -> Row:
    """Given client connections and usable max_connections, return the row (WARN above the
    threshold percentage)."""
    detail = (
        f"{usage.clients} client connection{'' if usage.clients == 1 else 's'} of "
        f"{usage.usable} usable "
        f"(max_connections {usage.max_connections} - {usage.reserved} reserved) = "
        f"{usage.percent:.1f} %; alert above {threshold:g} %"
    )
    return Row(PG_CONNECTIONS, Status.WARN if usage.percent > threshold else Status.OK, detail)


def container_row(stats: Any, cpu_limit: float, mem_limit: float) -> Row:
    """Given a container's stats, return its CPU / memory row (WARN above either threshold)."""
    over = []
    if stats.cpu_percent > cpu_limit:
        over.append("CPU")
    if stats.memory_percent > mem_limit:
        over.append("memory")
    detail = (
        f"CPU {stats.cpu_percent:.1f} % (alert above {cpu_limit:g} %), memory "
        f"{human_bytes(stats.memory_used)} of {human_bytes(stats.memory_limit)} = "
        f"{stats.memory_percent:.1f} % (alert above {mem_limit:g} %)"
    )
    if over:
        detail = f"{' and '.join(over)} above threshold: " + detail
    return Row(f"CPU / memory {stats.name}", Status.WARN if over else Status.OK, detail)


def tls_row(endpoint: str, not_after: datetime, warn_days: int, now: datetime) -> Row:
    """Given a certificate's expiry, return its row: FAIL when expired, WARN within
    ``warn_days``."""
    left = not_after - now
    days = left.total_seconds() / 86400
    when = not_after.strftime("%Y-%m-%d %H:%M UTC")
    name = f"TLS {endpoint}"
    if days < 0:
        return Row(name, Status.FAIL, f"expired on {when}")
    detail = f"expires {when}, in {days:.0f} days; alert under {warn_days} days"
    return Row(name, Status.WARN if days < warn_days else Status.OK, detail)


def latency_row(value: float | None, threshold_ms: float) -> Row:
    """Given the p95 latency in seconds (None: no data), return its row."""
    if value is None:
        return Row(LATENCY, Status.UNKNOWN, "Prometheus has no data for the latency query")
    ms = value * 1000
    status = Status.WARN if ms > threshold_ms else Status.OK
    return Row(LATENCY, status, f"{ms:.0f} ms; alert above {threshold_ms:g} ms")


def websocket_row(value: float | None, capacity: int | None, threshold: float) -> Row:
    """Given open WebSocket connections and the capacity (None: not set), return its row."""
    if value is None:
        return Row(WEBSOCKETS, Status.UNKNOWN, "Prometheus has no data for the WebSocket query")
    if not capacity:
        return Row(
            WEBSOCKETS,
            Status.UNKNOWN,
            f"{value:.0f} open; set HQ_WS_CAPACITY to compare with the {threshold:g} % threshold",
        )
    percent = 100.0 * value / capacity
    detail = f"{value:.0f} of {capacity} ({percent:.1f} %); alert above {threshold:g} %"
    return Row(WEBSOCKETS, Status.WARN if percent > threshold else Status.OK, detail)


def _not_configured(name: str, setting: str) -> Row:
    return Row(name, Status.UNKNOWN, f"not configured (set {setting})")


def metric_checks(ctx: Context, timeout: float) -> list[Check]:
    """Given a context, return one check per metric source of the Key Metrics table."""
    s = ctx.settings
    infra = ctx.infra
    checks: list[Check] = []
    prometheus = infra.prometheus
    if prometheus is None:
        checks.append(Check(LATENCY, lambda: _not_configured(LATENCY, "HQ_PROMETHEUS_URL")))
        checks.append(Check(WEBSOCKETS, lambda: _not_configured(WEBSOCKETS, "HQ_PROMETHEUS_URL")))
    else:
        latency_query, ws_query = s.hq_prometheus_latency_query, s.hq_prometheus_ws_query
        checks.append(
            Check(
                LATENCY,
                lambda: latency_row(
                    prometheus.scalar(latency_query), float(s.hq_alert_latency_p95_ms)
                ),
            )
        )
        checks.append(
            Check(
                WEBSOCKETS,
                lambda: websocket_row(
                    prometheus.scalar(ws_query), s.hq_ws_capacity, float(s.hq_alert_ws_percent)
                ),
            )
        )
    checks.append(
        Check(
            PG_CONNECTIONS,
            lambda: pg_row(
                infra.postgres.connection_usage(), float(s.hq_alert_pg_connections_percent)
            ),
        )
    )
    checks.append(
        Check(
            REDIS_MEMORY,
            lambda: redis_memory_row(
                infra.redis.memory(), float(s.hq_alert_redis_memory_percent), REDIS_MEMORY
            ),
        )
    )
    disk = float(s.hq_alert_disk_percent)
    root = Path(s.hq_docker_root)
    backups = Path(s.hq_backup_dir)
    checks.append(
        Check(
            f"disk {root}",
            lambda: disk_row(f"disk {root}", root, disk, " (Docker volumes, MinIO data)"),
        )
    )
    checks.append(Check(f"disk {backups}", lambda: disk_row(f"disk {backups}", backups, disk)))

    def containers() -> list[Row]:
        started = time.monotonic()
        running = [c for c in infra.docker.containers() if c.running]
        cpu, mem = float(s.hq_alert_cpu_percent), float(s.hq_alert_memory_percent)

        def one(container: Any) -> Row:
            return container_row(infra.docker.container_stats(container), cpu, mem)

        per = [Check(f"CPU / memory {c.name}", functools.partial(one, c)) for c in running]
        left = max(timeout - (time.monotonic() - started) - 0.2, 0.1)
        return run_checks(per, left) or [
            Row("CPU / memory", Status.FAIL, "no running container in the project")
        ]

    checks.append(Check("CPU / memory", containers))
    if not s.hq_tls_endpoints:
        checks.append(
            Check(
                "TLS certificates", lambda: _not_configured("TLS certificates", "HQ_TLS_ENDPOINTS")
            )
        )

    def certificate(endpoint: str) -> Row:
        not_after = infra.certificate(endpoint).not_after
        return tls_row(endpoint, not_after, int(s.hq_tls_warn_days), datetime.now(UTC))

    for endpoint in s.hq_tls_endpoints:
        checks.append(Check(f"TLS {endpoint}", functools.partial(certificate, endpoint)))
    return checks


def metrics_result(rows: Sequence[Row], seconds: float) -> Result:
    """Given the metric rows, return the result: how many are above threshold or unreadable."""
    alerts = [r.name for r in rows if r.status == Status.WARN]
    failed = [r.name for r in rows if r.status == Status.FAIL]
    verdict = worst([r.status for r in rows])
    parts = []
    if alerts:
        parts.append(f"{len(alerts)} above threshold")
    if failed:
        parts.append(f"{len(failed)} could not be read")
    title = "Key metrics: " + (", ".join(parts) if parts else "all within thresholds")
    return Result(
        ok=verdict != Status.FAIL,
        title=f"{title} ({seconds:.1f} s)",
        rows=tuple(rows),
        data={"verdict": verdict.value, "alerts": alerts, "failed": failed},
    )


def _plan(args: Mapping[str, Any], ctx: Context) -> Plan:
    s = ctx.settings
    timeout = float(s.hq_health_timeout)
    steps = [
        Step(
            f"Prometheus {s.hq_prometheus_url}: p95 latency and WebSocket connections"
            if s.hq_prometheus_url
            else "latency and WebSocket connections: not configured (HQ_PROMETHEUS_URL)"
        ),
        Step("PostgreSQL: client connections against usable max_connections"),
        Step("Redis: INFO memory"),
        Step(f"disk use of {s.hq_docker_root} and {s.hq_backup_dir}"),
        Step("Docker Engine: CPU and memory per container (one stats sample)"),
        Step(
            f"TLS certificate expiry of {', '.join(s.hq_tls_endpoints)}"
            if s.hq_tls_endpoints
            else "TLS certificates: not configured (HQ_TLS_ENDPOINTS)"
        ),
    ]
    return Plan(
        command="metrics",
        summary=f"read the Key Metrics table in parallel ({timeout:g} s each)",
        steps=tuple(steps),
        data={"timeout": timeout},
    )


def _execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
    started = time.monotonic()
    timeout = float(plan.data["timeout"])
    rows = run_checks(metric_checks(ctx, timeout), timeout)
    return metrics_result(rows, time.monotonic() - started)


SPECS = (
    CommandSpec(
        name="metrics",
        summary="Show the guide's Key Metrics with their thresholds (connections, memory, "
        "CPU, disk, TLS expiry, latency).",
        plan=_plan,
        execute=_execute,
        section="Monitoring",
    ),
)
