"""The bot's own metrics for Prometheus (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

COMMANDS = Counter(
    "hq_commands", "Commands by name and result", ["command", "result"], registry=REGISTRY
)
APPROVALS = Counter("hq_approvals", "Approval decisions", ["decision"], registry=REGISTRY)
APPROVAL_LATENCY = Histogram(
    "hq_approval_latency_seconds",
    "Time from request to decision",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800),
    registry=REGISTRY,
)
JOB_RUNS = Counter("hq_job_runs", "Scheduled job runs", ["job", "result"], registry=REGISTRY)
BACKUP_SIZE = Gauge("hq_backup_size_bytes", "Size of the last backup", registry=REGISTRY)
BACKUP_DURATION = Gauge(
    "hq_backup_duration_seconds", "Duration of the last backup", registry=REGISTRY
)
ALERT_STATE = Gauge(
    "hq_alert_firing",
    "1 when an alert fires, 0 when ok, -1 when unknown",
    ["alert"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "hq_scheduler_leader", "1 when this replica runs the scheduled jobs", registry=REGISTRY
)


def exposition() -> tuple[int, str, bytes]:
    """Return (status, content type, body) of the metrics page."""
    return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
