"""PostgreSQL, Redis and S3 clients: what can be checked without the sandbox (their real
exchanges are in tests/integration/test_sandbox_clients.py)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from bot.settings import Settings
from commands.infra import Infra
from commands.infra.gateway import InfraError
from commands.infra.http import Http
from commands.infra.postgres import ConnectionUsage, Postgres
from commands.infra.redis_client import Redis, RedisMemory
from commands.infra.s3 import S3
from tests.unit.infra_servers import http_server, silent_server

ENV = {
    "DB_USER": "harmoniq",
    "DB_PASSWORD": "unit-pg-password-1",
    "DB_NAME": "harmoniq",
    "MINIO_ACCESS_KEY": "unit-access",
    "MINIO_SECRET_KEY": "unit-secret-key-1",
}


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def test_usable_connections_leave_out_the_reserved_slots() -> None:
    usage = ConnectionUsage(clients=78, max_connections=100, reserved=3)
    assert usage.usable == 97 and usage.percent == pytest.approx(80.41, abs=0.01)


def test_postgres_errors_never_contain_the_password() -> None:
    pg = Postgres("127.0.0.1", _closed_port(), lambda: ENV, timeout=2)
    with pytest.raises(InfraError) as info:
        pg.ping()
    assert "unit-pg-password-1" not in info.value.message
    assert f"127.0.0.1:{pg.port}" in info.value.message and "harmoniq" in info.value.message


def test_postgres_names_missing_credentials() -> None:
    pg = Postgres("127.0.0.1", 5432, lambda: {"DB_USER": "x"})
    with pytest.raises(InfraError, match="does not set DB_PASSWORD, DB_NAME"):
        pg.ping()


def test_postgres_that_never_answers_fails_within_its_connect_timeout() -> None:
    with silent_server() as port:
        pg = Postgres("127.0.0.1", port, lambda: ENV, timeout=1)
        started = time.monotonic()
        with pytest.raises(InfraError):
            pg.ping()
        assert time.monotonic() - started < 5


def test_redis_memory_percent_and_no_limit() -> None:
    assert RedisMemory(used=50, maxmemory=200, policy="allkeys-lru").percent == 25
    assert RedisMemory(used=50, maxmemory=0, policy="noeviction").percent is None


def test_redis_unreachable_and_silent_fail_fast_without_retries() -> None:
    client = Redis(f"redis://:pw-in-url-123@127.0.0.1:{_closed_port()}/0", timeout=1)
    with pytest.raises(InfraError, match="unreachable") as info:
        client.ping()
    assert "pw-in-url-123" not in info.value.message
    with silent_server() as port:
        started = time.monotonic()
        with pytest.raises(InfraError, match=r"did not answer within 0\.5 s"):
            Redis(f"redis://127.0.0.1:{port}/0", timeout=0.5).ping()
        assert time.monotonic() - started < 2


def test_s3_live_uses_the_minio_endpoint_when_offered() -> None:
    with http_server(lambda path: (200, "")) as url:
        ok, how = S3(url, "harmoniq-uploads", lambda: ENV).live(Http())
    assert ok and "/minio/health/live answered 200" in how


def test_s3_live_falls_back_to_a_bucket_head_on_other_servers() -> None:
    def handle(path: str) -> tuple[int, Any]:
        return (200, "") if path.startswith("/harmoniq-uploads") else (404, "<Error/>")

    with http_server(handle) as url:
        ok, how = S3(url, "harmoniq-uploads", lambda: ENV).live(Http())
    assert ok and "not offered (HTTP 404)" in how and "HEAD bucket harmoniq-uploads" in how


def test_s3_unreachable_is_an_infra_error() -> None:
    s3 = S3(f"http://127.0.0.1:{_closed_port()}", "b-u-c", lambda: ENV, timeout=1)
    with pytest.raises(InfraError, match="unreachable"):
        s3.live(Http())


def test_infra_builds_each_client_once_from_settings(tmp_path: Path, make_settings: Any) -> None:
    env = tmp_path / ".env"
    env.write_text("DB_USER=u\nDB_PASSWORD=infra-pw-123\nDB_NAME=d\n")
    settings: Settings = make_settings(hq_env_file=env, hq_postgres_port=6543)
    infra = Infra(settings)
    assert infra.postgres is infra.postgres and infra.redis is infra.redis
    assert infra.postgres.port == 6543 and infra.postgres.credentials()[1] == "infra-pw-123"
    assert infra.compose.argv.project == settings.hq_compose_project
    assert infra.prometheus is None
    infra.close()
