"""Infrastructure clients, built lazily from settings and handed to commands."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from commands.infra.compose import Compose
    from commands.infra.docker_engine import DockerEngine
    from commands.infra.envfile import EnvFile
    from commands.infra.http import Http
    from commands.infra.postgres import Postgres
    from commands.infra.prometheus import Prometheus
    from commands.infra.redis_client import Redis
    from commands.infra.s3 import S3
    from commands.infra.tls import Certificate

T = TypeVar("T")


class Infra:
    """Lazily created clients of the deployment (compose, Docker Engine, PostgreSQL, Redis,
    S3, HTTP, the .env file, Prometheus). A command asks only for what it uses; each client is
    built once, on first use, whichever thread asks first."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        # re-entrant: one client's factory may ask for another (postgres needs env)
        self._lock = threading.RLock()
        self._made: dict[str, Any] = {}

    def _get(self, name: str, make: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._made:
                self._made[name] = make()
            client: T = self._made[name]
            return client

    @property
    def timeout(self) -> float:
        """Seconds a single call to a service may take (HQ_HEALTH_TIMEOUT)."""
        return float(self.settings.hq_health_timeout)

    @property
    def env(self) -> EnvFile:
        """The deployment's ``.env`` (read again on every ``read()``)."""
        from commands.infra.envfile import EnvFile

        return self._get("env", lambda: EnvFile(self.settings.hq_env_file))

    @property
    def compose(self) -> Compose:
        from commands.infra.compose import Compose, ComposeArgv

        return self._get("compose", lambda: Compose(ComposeArgv.from_settings(self.settings)))

    @property
    def docker(self) -> DockerEngine:
        from commands.infra.docker_engine import DockerEngine

        project = self.settings.hq_compose_project
        timeout = max(30.0, self.timeout)
        return self._get("docker", lambda: DockerEngine(project, timeout=timeout))

    @property
    def postgres(self) -> Postgres:
        from commands.infra.postgres import Postgres

        s, env = self.settings, self.env
        return self._get(
            "postgres",
            lambda: Postgres(s.hq_postgres_host, s.hq_postgres_port, env.read, self.timeout),
        )

    @property
    def redis(self) -> Redis:
        from commands.infra.redis_client import Redis

        return self._get("redis", lambda: Redis(self.settings.hq_redis_url, self.timeout))

    @property
    def s3(self) -> S3:
        from commands.infra.s3 import S3

        s, env = self.settings, self.env
        return self._get("s3", lambda: S3(s.hq_s3_endpoint, s.hq_s3_bucket, env.read, self.timeout))

    @property
    def http(self) -> Http:
        from commands.infra.http import Http

        return self._get("http", lambda: Http(self.timeout))

    @property
    def prometheus(self) -> Prometheus | None:
        """The Prometheus server of HQ_PROMETHEUS_URL, or None when it is not configured."""
        from commands.infra.prometheus import Prometheus

        url = self.settings.hq_prometheus_url
        if not url:
            return None
        http = self.http
        return self._get("prometheus", lambda: Prometheus(url, http, self.timeout))

    def certificate(self, endpoint: str) -> Certificate:
        """Return the TLS certificate served at ``host:port``."""
        from commands.infra.tls import fetch_certificate

        return fetch_certificate(endpoint, self.timeout)

    def close(self) -> None:
        """Close the clients that hold connections."""
        with self._lock:
            made, self._made = self._made, {}
        for client in made.values():
            closer = getattr(client, "close", None)
            if callable(closer):
                closer()
