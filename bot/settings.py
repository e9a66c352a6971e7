"""Settings: read once from the environment (and an optional env file), validated at start.

Every setting, its default and its meaning is listed in the README's settings table; keep the two
in step (``tests/unit/test_settings.py`` checks that the README names every field).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SLACK_ID = re.compile(r"^[UWBS][A-Z0-9]{2,20}$")
SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]{1,253}):[0-9]{1,5}$")  # issue 3
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class SettingsError(Exception):
    """A setting is wrong or missing; the message names it and says what is expected."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _matching(value: str, pattern: str | re.Pattern[str], what: str) -> str:
    """Given a setting, return it when ``pattern`` matches it. Raise ValueError saying it is not
    ``what``."""
    if not re.match(pattern, value):
        raise ValueError(f"{value!r} is not {what}")
    return value


def _host_port(value: str, example: str) -> str:
    """Given a ``host:port`` setting, return it. Raise ValueError (showing ``example``) when it
    is not one or the port is out of range."""
    if not HOST_PORT.match(value) or not 1 <= int(value.rsplit(":", 1)[1]) <= 65535:
        raise ValueError(f"{value!r} is not host:port (like {example})")
    return value


def _optional_bucket(value: str) -> str:
    """Given a bucket setting, return "" when it says there is none (``none``, ``off``, ``-``,
    blank), else the bucket name. Raise ValueError when it is not an S3 bucket name."""
    value = value.strip()
    if value.lower() in {"", "none", "off", "-"}:
        return ""
    return _matching(value, S3_BUCKET, "an S3 bucket name (or `none`)")


class Settings(BaseSettings):
    """All of hq-bot's configuration. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        env_ignore_empty=True,
    )

    # --- Slack -------------------------------------------------------------------------------
    slack_bot_token: SecretStr | None = Field(
        default=None, description="Bot token (xoxb-...). Needed by `serve`."
    )
    slack_signing_secret: SecretStr | None = Field(
        default=None,
        description="Signing secret; verifies HTTP requests. Needed by `serve --http`.",
    )
    slack_app_token: SecretStr | None = Field(
        default=None, description="App-level token (xapp-...); when set, `serve` uses Socket Mode."
    )
    slack_api_url: str = Field(
        default="https://slack.com/api/", description="Web API base URL (tests use a fake)."
    )

    # --- Bot ---------------------------------------------------------------------------------
    hq_database_url: str = Field(
        default="sqlite:///hq-bot.db",
        description="SQLAlchemy URL of the bot's own database (operations, approvals, audit).",
    )
    hq_ops_channel: str = Field(
        default="", description="Channel ID where results, digests and alerts are posted."
    )
    hq_approvers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Slack user IDs allowed to approve, comma separated."
    )
    hq_approver_group: str = Field(
        default="", description="Slack user group ID whose members may also approve."
    )
    hq_operators: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Slack user IDs allowed to run commands; empty means anyone in the channel.",
    )
    hq_workers: int = Field(
        default=4, ge=1, le=64, description="Threads that run long commands (our own pool)."
    )
    hq_queue_limit: int = Field(
        default=32, ge=1, le=10_000, description="Commands allowed to wait for a worker."
    )
    hq_log_level: str = Field(default="INFO", description="Log level (DEBUG, INFO, WARNING...).")
    hq_audit_key: SecretStr | None = Field(
        default=None,
        description="HMAC key of the audit chain. Unset: a key file beside a SQLite database.",
    )

    # --- Approvals ---------------------------------------------------------------------------
    hq_approvals_required: int = Field(
        default=1, ge=1, le=5, description="Approvals a request needs (never the requester's)."
    )
    hq_approval_ttl_minutes: int = Field(
        default=30, ge=1, le=1440, description="Minutes before a pending request expires."
    )
    hq_approval_commands: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Extra commands that need approval, comma separated (e.g. `restart,scale`).",
    )

    # --- Scheduler, alerts, the bot's own metrics ----------------------------------------------
    hq_scheduler_enabled: bool = Field(
        default=True, description="Run scheduled jobs (one replica leads at a time)."
    )
    hq_schedule_backup: str = Field(
        default="0 2 * * *", description="Cron of the database backup (then retention)."
    )
    hq_schedule_minio: str = Field(
        default="0 3 * * 0", description="Cron of the MinIO mirror (Sunday 03:00, as the guide)."
    )
    hq_schedule_digest: str = Field(
        default="0 8 * * *", description="Cron of the health digest in the ops channel."
    )
    hq_schedule_metrics: str = Field(
        default="* * * * *", description="Cron of the metrics evaluation (alerts)."
    )
    hq_schedule_tls: str = Field(default="0 9 * * *", description="Cron of the TLS expiry check.")
    hq_schedule_timezone: str = Field(default="UTC", description="Time zone of the crons.")
    hq_report_job_success: bool = Field(
        default=True, description="Post successful job runs too (failures are always posted)."
    )
    hq_leader_poll_seconds: float = Field(
        default=10.0, gt=0, le=60, description="How often a replica checks who leads the jobs."
    )
    hq_alert_hold_seconds: float = Field(
        default=300.0, ge=0, description="How long a condition must hold before it fires."
    )
    hq_alert_clear_margin: float = Field(
        default=5.0, ge=0, description="Percentage points under the threshold to clear."
    )
    hq_alert_repeat_minutes: float = Field(
        default=60.0, gt=0, description="Minutes before a firing alert is posted again."
    )
    hq_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="In Socket Mode, serve /healthz and /metrics on this port (127.0.0.1).",
    )

    # --- The Harmoniq deployment ---------------------------------------------------------------
    hq_compose_project: str = Field(
        default="harmoniq", description="docker compose project name of the deployment."
    )
    hq_compose_file: Path = Field(
        default=Path("/opt/harmoniq/docker-compose.yml"),
        description="The deployment's compose file.",
    )
    hq_env_file: Path = Field(
        default=Path("/opt/harmoniq/.env"), description="The deployment's `.env` with its secrets."
    )
    hq_compose_command: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["docker", "compose"],
        description="argv prefix that runs compose v2, comma separated.",
    )
    hq_service_backend: str = Field(default="backend", description="Backend service name.")
    hq_service_postgres: str = Field(default="postgres", description="PostgreSQL service name.")
    hq_service_redis: str = Field(default="redis", description="Redis service name.")
    hq_service_minio: str = Field(default="minio", description="MinIO service name.")
    hq_service_coturn: str = Field(default="coturn", description="coturn service name.")
    hq_service_nginx: str = Field(default="nginx", description="nginx service name.")

    # --- Infra clients, health and metrics (issue 3) -------------------------------------------
    hq_backend_url: str = Field(
        default="http://127.0.0.1:4000",
        description="Base URL of the backend; `/hq health` reads its `/health`.",
    )
    hq_postgres_host: str = Field(
        default="127.0.0.1", description="Host where the deployment's PostgreSQL listens."
    )
    hq_postgres_port: int = Field(
        default=5432, ge=1, le=65535, description="Port of the deployment's PostgreSQL."
    )
    hq_redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="redis:// URL of the deployment's Redis."
    )
    hq_s3_endpoint: str = Field(
        default="http://127.0.0.1:9000",
        description="MinIO (S3) endpoint URL; http:// means no TLS.",
    )
    hq_s3_bucket: str = Field(default="harmoniq-uploads", description="The uploads bucket.")
    hq_backup_dir: Path = Field(
        default=Path("/opt/backups"), description="Folder where backups are kept (disk check)."
    )
    hq_docker_root: Path = Field(
        default=Path("/var/lib/docker"), description="Docker data root (disk check)."
    )
    hq_docker_daemon_json: Path = Field(
        default=Path("/etc/docker/daemon.json"),
        description="Docker daemon config read by `/hq check logging`.",
    )
    hq_health_timeout: float = Field(
        default=5.0, gt=0, le=120, description="Seconds each health or metric check may take."
    )
    hq_scale_max: int = Field(
        default=10, ge=1, le=100, description="Most backend replicas `/hq scale` allows."
    )
    hq_nginx_conf: Path | None = Field(
        default=None,
        description="nginx config to check for `ip_hash` when scaling; unset: not checked.",
    )
    hq_tls_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="host:port endpoints whose TLS certificate expiry is watched, comma separated.",
    )
    hq_tls_warn_days: int = Field(
        default=14, ge=1, le=365, description="Warn when a certificate expires within N days."
    )
    hq_prometheus_url: str | None = Field(
        default=None, description="Prometheus base URL for latency and WebSocket metrics."
    )
    hq_prometheus_latency_query: str = Field(
        default="histogram_quantile(0.95, sum by (le) "
        "(rate(http_request_duration_seconds_bucket[5m])))",
        description="PromQL giving the backend's p95 HTTP latency in seconds.",
    )
    hq_prometheus_ws_query: str = Field(
        default="sum(socket_io_connected)",
        description="PromQL giving the number of open WebSocket (Socket.IO) connections.",
    )
    hq_ws_capacity: int | None = Field(
        default=None, ge=1, description="WebSocket connections the backend is sized for."
    )
    hq_alert_latency_p95_ms: float = Field(
        default=500, gt=0, description="Alert when the HTTP p95 latency exceeds this (ms)."
    )
    hq_alert_ws_percent: float = Field(
        default=80, gt=0, le=100, description="Alert above this % of HQ_WS_CAPACITY."
    )
    hq_alert_pg_connections_percent: float = Field(
        default=80, gt=0, le=100, description="Alert above this % of usable max_connections."
    )
    hq_alert_redis_memory_percent: float = Field(
        default=80, gt=0, le=100, description="Warn at or above this % of Redis maxmemory."
    )
    hq_alert_disk_percent: float = Field(
        default=85, gt=0, le=100, description="Warn at or above this % of a disk's capacity."
    )
    hq_alert_cpu_percent: float = Field(
        default=80, gt=0, description="Alert above this container CPU % (100 = one core)."
    )
    hq_alert_memory_percent: float = Field(
        default=90, gt=0, le=100, description="Alert above this % of a container's memory limit."
    )
    # --- end of issue 3 block ------------------------------------------------------------------

    # --- issue 6: secret rotation, upgrades, rollback ------------------------------------------
    hq_deploy_dir: Path | None = Field(
        default=None,
        description="The deployment's git checkout (`upgrade app`, `rollback`); unset: the "
        "compose file's folder.",
    )
    hq_git_remote: str = Field(default="origin", description="git remote `upgrade app` fetches.")
    hq_git_branch: str = Field(
        default="main", description="Branch of HQ_GIT_REMOTE that `upgrade app` goes to by default."
    )
    hq_git_fetch_timeout: float = Field(
        default=2.0,
        gt=0,
        le=120,
        description="Seconds `git fetch` may take while a plan is made (it runs before Slack's "
        "3 s ack); slower: the plan shows the last fetched state and says so.",
    )
    hq_migrations_file: str = Field(
        default="infra/db/migrations/latest.sql",
        description="SQL run through psql in the postgres container after `upgrade app` "
        "(relative to HQ_DEPLOY_DIR; skipped when the commit has no such file).",
    )
    hq_gate_timeout: float = Field(
        default=90.0,
        gt=0,
        le=1800,
        description="Seconds a recreated service has to prove healthy (rotate, upgrade, "
        "rollback) before the change is undone or reported failed.",
    )
    hq_build_timeout: float = Field(
        default=900.0, gt=0, le=7200, description="Seconds `docker compose build` may take."
    )
    hq_turn_address: str = Field(
        default="127.0.0.1:3478",
        description="host:port of coturn (UDP) for the TURN credential check after "
        "`rotate turn-secret`.",
    )
    # --- end of issue 6 block ------------------------------------------------------------------

    # --- Database backups and restore (issue 5) --------------------------------------------------
    hq_backup_bucket: str = Field(
        default="harmoniq-backups",
        description="S3 bucket that gets a copy of every backup (created if missing, with a "
        "lifecycle rule that aborts multipart uploads left incomplete for a day where the store "
        "supports it; MinIO drops stale uploads by itself after 24 h); `none` (or an empty "
        "value given programmatically) keeps backups on disk only.",
    )
    hq_backup_key: SecretStr | None = Field(
        default=None,
        description="Base64 of 32 random bytes (`openssl rand -base64 32`): encrypts backups at "
        "rest with AES-256-GCM. Unset: backups are stored unencrypted. Keep a copy elsewhere.",
    )
    hq_backup_keep_daily: int = Field(
        default=7, ge=0, le=3650, description="Retention: keep the newest backup of N days."
    )
    hq_backup_keep_weekly: int = Field(
        default=4, ge=0, le=520, description="Retention: keep the newest backup of M ISO weeks."
    )
    hq_backup_timeout: float = Field(
        default=3600.0,
        gt=0,
        le=86400,
        description="Seconds a dump, a full-read check or a restore may take before it is killed.",
    )
    hq_backup_part_mb: int = Field(
        default=5,
        ge=5,
        le=5120,
        description="Smallest S3 multipart part in MiB (larger for databases over ~45 GB, so a "
        "dump fits in S3's 10,000 parts). About three parts are in memory during an upload.",
    )
    hq_pg_restore: str = Field(
        default="pg_restore",
        description="The host's pg_restore (PostgreSQL client, same major version as the server "
        "or newer): verifies archives and restores over TCP.",
    )
    hq_restore_jobs: int = Field(
        default=1,
        ge=1,
        le=16,
        description="pg_restore -j for unencrypted backups. 1 restores in one transaction (all or "
        "nothing); more is faster, but a failure leaves a partial restore.",
    )
    hq_restore_health_wait: float = Field(
        default=120.0,
        gt=0,
        le=1800,
        description="Seconds to wait for backend /health after a restore.",
    )
    # --- end of issue 5 block ------------------------------------------------------------------

    # --- MinIO backup: mirror of the uploads bucket -----------------------------------------------
    hq_minio_backup_dir: Path | None = Field(
        default=None,
        description="Folder that `/hq minio backup` mirrors the uploads bucket into (like "
        "`mc mirror`); unset: `<HQ_BACKUP_DIR>/minio`.",
    )
    hq_minio_mirror_bucket: str = Field(
        default="",
        description="A second bucket on the same S3 endpoint that also gets a copy of every "
        "object (server-side copy); empty or `none`: off.",
    )
    hq_minio_backup_workers: int = Field(
        default=4, ge=1, le=32, description="Objects `/hq minio backup` copies at a time."
    )
    hq_minio_backup_read_timeout: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds one read from S3 may wait during a mirror before the object fails.",
    )
    # --- end of MinIO backup block ----------------------------------------------------------------

    @field_validator(
        "hq_approvers",
        "hq_operators",
        "hq_compose_command",
        "hq_approval_commands",
        "hq_tls_endpoints",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("hq_approvers", "hq_operators")
    @classmethod
    def _slack_ids(cls, value: list[str]) -> list[str]:
        return [_matching(item, SLACK_ID, "a Slack user ID (like U0123ABCD)") for item in value]

    @field_validator("hq_approver_group")
    @classmethod
    def _group_id(cls, value: str) -> str:
        if not value:
            return value
        return _matching(value, r"^S[A-Z0-9]{2,20}$", "a Slack user group ID (like S0123ABCD)")

    @field_validator(
        "hq_service_backend",
        "hq_service_postgres",
        "hq_service_redis",
        "hq_service_minio",
        "hq_service_coturn",
        "hq_service_nginx",
        "hq_compose_project",
    )
    @classmethod
    def _service(cls, value: str) -> str:
        return _matching(value, SERVICE_NAME, "a compose name (lower case, digits, - _ .)")

    @field_validator(
        "hq_schedule_backup",
        "hq_schedule_minio",
        "hq_schedule_digest",
        "hq_schedule_metrics",
        "hq_schedule_tls",
    )
    @classmethod
    def _cron(cls, value: str) -> str:
        from bot.cron import trigger

        trigger(value)
        return value

    @field_validator("hq_log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("expected one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("slack_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not re.match(r"^https?://", value):
            raise ValueError("expected an http(s) URL")
        return value if value.endswith("/") else value + "/"

    @field_validator("hq_compose_command")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("expected at least one word, e.g. docker,compose")
        return value

    # --- issue 3 validators ----------------------------------------------------------------------
    @field_validator("hq_tls_endpoints")
    @classmethod
    def _host_ports(cls, value: list[str]) -> list[str]:
        return [_host_port(item, "harmoniq.example.org:443") for item in value]

    @field_validator("hq_backend_url", "hq_s3_endpoint", "hq_prometheus_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/?#]+", value):
            raise ValueError("expected an http(s) URL like http://127.0.0.1:4000")
        return value.rstrip("/") if value else value

    @field_validator("hq_redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("expected a redis:// (or rediss://, unix://) URL")
        return value

    @field_validator("hq_postgres_host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _matching(
            value, r"^[A-Za-z0-9_.:/-]{1,255}$", "a host name, address or socket folder"
        )

    @field_validator("hq_s3_bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        return _matching(value, S3_BUCKET, "an S3 bucket name")

    # --- end of issue 3 validators ---------------------------------------------------------------

    # --- issue 6 validators ----------------------------------------------------------------------
    @field_validator("hq_git_remote", "hq_git_branch")
    @classmethod
    def _git_name(cls, value: str) -> str:
        from commands.infra.git import parse_ref

        return parse_ref(value)

    @field_validator("hq_migrations_file")
    @classmethod
    def _relative_file(cls, value: str) -> str:
        parts = Path(value).parts
        if not value or Path(value).is_absolute() or ".." in parts or value.startswith("-"):
            raise ValueError("expected a path inside the checkout, like infra/db/migrations/x.sql")
        return value

    @field_validator("hq_turn_address")
    @classmethod
    def _turn_address(cls, value: str) -> str:
        return _host_port(value, "127.0.0.1:3478")

    # --- end of issue 6 validators ---------------------------------------------------------------

    # --- issue 5 validators ----------------------------------------------------------------------
    @field_validator("hq_backup_bucket")
    @classmethod
    def _backup_bucket(cls, value: str) -> str:
        return _optional_bucket(value)

    @field_validator("hq_backup_key")
    @classmethod
    def _backup_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        import base64
        import binascii

        try:
            raw = base64.b64decode(value.get_secret_value().strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("expected base64 (e.g. from `openssl rand -base64 32`)") from None
        if len(raw) != 32:
            raise ValueError(f"expected base64 of 32 bytes, got {len(raw)} bytes")
        return value

    @field_validator("hq_pg_restore")
    @classmethod
    def _program(cls, value: str) -> str:
        return _matching(value, r"^[A-Za-z0-9_./-]{1,255}$", "a program name or path")

    # --- end of issue 5 validators ---------------------------------------------------------------

    # --- MinIO backup validators ------------------------------------------------------------------
    @field_validator("hq_minio_mirror_bucket")
    @classmethod
    def _mirror_bucket(cls, value: str, info: ValidationInfo) -> str:
        value = _optional_bucket(value)
        if value and value == info.data.get("hq_s3_bucket"):
            raise ValueError("the mirror bucket must differ from HQ_S3_BUCKET")
        return value

    # --- end of MinIO backup validators -----------------------------------------------------------

    @model_validator(mode="after")
    def _tokens(self) -> Settings:
        bot = self.slack_bot_token.get_secret_value() if self.slack_bot_token else ""
        app = self.slack_app_token.get_secret_value() if self.slack_app_token else ""
        if bot and not bot.startswith("xoxb-"):
            raise ValueError("SLACK_BOT_TOKEN must start with xoxb-")
        if app and not app.startswith("xapp-"):
            raise ValueError("SLACK_APP_TOKEN must start with xapp-")
        return self

    def secret_values(self) -> list[str]:
        """Return every secret this process holds, for log and message redaction."""
        values = [self.slack_bot_token, self.slack_signing_secret, self.slack_app_token]
        values += [self.hq_audit_key, self.hq_backup_key]
        return [v.get_secret_value() for v in values if v and v.get_secret_value()]


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Given an optional env file, return validated settings. Raise SettingsError naming the bad
    setting and what it expects."""
    if env_file is not None and not Path(env_file).is_file():
        raise SettingsError(f"--env-file {env_file}: no such file")
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]).upper() or "settings"
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
