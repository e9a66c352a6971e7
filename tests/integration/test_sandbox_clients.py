"""Each infra client against the real thing: the sandbox's compose project, Docker Engine,
PostgreSQL, Redis, S3 server and backend."""

from __future__ import annotations

from typing import Any

import pytest

from commands.infra import Infra
from commands.infra.gateway import CommandFailed, InfraError
from commands.redact import MASK, default_redactor
from tests.integration.conftest import PROJECT, SERVICES

pytestmark = pytest.mark.integration


@pytest.fixture
def infra(sandbox_settings: Any) -> Any:
    infra = Infra(sandbox_settings())
    yield infra
    infra.close()


def test_compose_lists_services_and_containers(infra: Any) -> None:
    assert infra.compose.services() == sorted(SERVICES)
    containers = infra.compose.ps()
    assert {c.service for c in containers} == set(SERVICES)
    assert all(c.running and c.health == "healthy" for c in containers)


def test_compose_logs_carry_the_containers_stderr(infra: Any) -> None:
    infra.http.get(infra.settings.hq_backend_url + "/health")
    text = infra.compose.logs(["backend"], tail=20, timestamps=True)
    assert "GET /health" in text  # the backend logs requests on stderr


def test_compose_failure_is_a_command_failure(infra: Any) -> None:
    argv = infra.compose.argv.restart(["no-such-service"])
    with pytest.raises(CommandFailed) as info:
        infra.compose.run(argv)
    assert info.value.returncode != 0 and "no-such-service" in info.value.message


def test_docker_engine_finds_the_project_by_its_labels(infra: Any) -> None:
    containers = infra.docker.containers()
    assert {c.service for c in containers} == set(SERVICES)
    assert all(c.name.startswith(PROJECT) for c in containers)
    assert infra.docker.health("redis") == {f"{PROJECT}-redis-1": "healthy"}
    assert infra.docker.info()["LoggingDriver"]


def test_exec_stream_returns_output_and_detects_a_non_zero_exit(infra: Any) -> None:
    port = str(infra.redis.client.connection_pool.connection_kwargs["port"])
    out = infra.docker.exec_stream("redis", ["redis-cli", "-p", port, "ping"]).read()
    assert out.strip() == b"PONG"
    stream = infra.docker.exec_stream("redis", ["sh", "-c", "echo partial; exit 3"])
    chunks = []
    with pytest.raises(CommandFailed) as info:
        for chunk in stream:
            chunks.append(chunk)
    assert b"".join(chunks) == b"partial\n" and info.value.returncode == 3
    assert stream.exit_code == 3


def test_docker_stats_give_cpu_and_memory(infra: Any) -> None:
    stats = infra.docker.container_stats(infra.docker.container("redis"))
    assert stats.memory_used > 0 and stats.memory_limit >= stats.memory_used
    assert 0 <= stats.cpu_percent < 100 * stats.online_cpus


def test_env_file_secrets_are_registered_for_redaction(infra: Any) -> None:
    values = infra.env.read()
    assert default_redactor()(f"pw {values['DB_PASSWORD']}") == f"pw {MASK}"


def test_postgres_ping_and_connection_usage(infra: Any) -> None:
    assert infra.postgres.ping().startswith("15")
    usage = infra.postgres.connection_usage()
    assert usage.clients >= 1 and usage.max_connections > usage.reserved >= 0


def test_postgres_with_a_wrong_password_never_shows_it(sandbox_settings: Any) -> None:
    from commands.infra.postgres import Postgres

    settings = sandbox_settings()
    env = dict(Infra(settings).env.read())
    env["DB_PASSWORD"] = "wrong-password-xyz"
    pg = Postgres(settings.hq_postgres_host, settings.hq_postgres_port, lambda: env, timeout=3)
    with pytest.raises(InfraError) as info:
        pg.ping()
    assert "password authentication failed" in info.value.message
    assert "wrong-password-xyz" not in info.value.message


def test_redis_ping_and_memory(infra: Any) -> None:
    assert infra.redis.ping()
    memory = infra.redis.memory()
    assert memory.maxmemory == 256 * 1024 * 1024 and memory.policy == "allkeys-lru"
    assert memory.percent is not None and 0 < memory.percent < 100


def test_s3_live_and_bucket(infra: Any) -> None:
    ok, how = infra.s3.live(infra.http)
    assert ok, how
    assert infra.s3.bucket_exists()
    assert not infra.s3.bucket_exists("no-such-bucket-hq")


def test_backend_health_over_http(infra: Any) -> None:
    resp = infra.http.get(infra.settings.hq_backend_url + "/health")
    body = resp.json()
    assert resp.status == 200 and body["status"] == "ok"
    assert body["postgres"]["ok"] and body["redis"]["ok"]
