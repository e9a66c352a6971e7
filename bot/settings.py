"""Settings: read once from the environment (and an optional env file), validated at start.

Every setting, its default and its meaning is listed in the README's settings table; keep the two
in step (``tests/unit/test_settings.py`` checks that the README names every field).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SLACK_ID = re.compile(r"^[UWBS][A-Z0-9]{2,20}$")
SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class SettingsError(Exception):
    """A setting is wrong or missing; the message names it and says what is expected."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


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
        default=None, description="Signing secret; verifies HTTP requests. Needed by `serve --http`."
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

    # --- The Harmoniq deployment ---------------------------------------------------------------
    hq_compose_project: str = Field(
        default="harmoniq", description="docker compose project name of the deployment."
    )
    hq_compose_file: Path = Field(
        default=Path("/opt/harmoniq/docker-compose.yml"), description="The deployment's compose file."
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

    @field_validator("hq_approvers", "hq_operators", "hq_compose_command", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("hq_approvers", "hq_operators")
    @classmethod
    def _slack_ids(cls, value: list[str]) -> list[str]:
        for item in value:
            if not SLACK_ID.match(item):
                raise ValueError(f"{item!r} is not a Slack user ID (like U0123ABCD)")
        return value

    @field_validator("hq_approver_group")
    @classmethod
    def _group_id(cls, value: str) -> str:
        if value and not re.match(r"^S[A-Z0-9]{2,20}$", value):
            raise ValueError(f"{value!r} is not a Slack user group ID (like S0123ABCD)")
        return value

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
        if not SERVICE_NAME.match(value):
            raise ValueError(f"{value!r} is not a compose name (lower case, digits, - _ .)")
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
        values.append(self.hq_audit_key)
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
