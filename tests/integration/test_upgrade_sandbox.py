"""Issue 6: `upgrade app`, `rollback` and `upgrade infra` against the sandbox, approved on the
console (alice asks, bob approves).

The sandbox's app checkout (sandbox/run/harmoniq/app, a clone of sandbox/run/origin.git) has
`main` (commit 1, VERSION 0.1.0-sandbox) and `next` (commit 2, VERSION 0.2.0-sandbox and a
migration). Each test leaves the checkout, the compose file and the database as it found them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from commands.infra import gateway
from commands.infra.envfile import parse_env
from tests.integration.conftest import (
    DEPLOY_DIR,
    PROJECT,
    container_of,
    docker,
    run_console,
    wait_healthy,
)
from tests.integration.test_rotate_sandbox import approve_on_console, backend_health

pytestmark = pytest.mark.integration

APP_DIR = DEPLOY_DIR / "app"
COMPOSE_FILE = DEPLOY_DIR / "docker-compose.yml"


def git(*args: str) -> str:
    return gateway.run(("git", "-C", str(APP_DIR), *args), timeout=60).text.strip()


def compose(*args: str) -> str:
    argv = ("docker", "compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *args)
    return gateway.run(argv, timeout=600, cwd=DEPLOY_DIR).text


def sql(query: str) -> list[tuple[Any, ...]]:
    values = parse_env((DEPLOY_DIR / ".env").read_text())
    with psycopg.connect(
        host="127.0.0.1",
        port=55432,
        user=values["DB_USER"],
        password=values["DB_PASSWORD"],
        dbname=values["DB_NAME"],
        autocommit=True,
    ) as conn:
        cur = conn.execute(query)
        return list(cur.fetchall()) if cur.description else []


def reset_app(main: str) -> None:
    """Put the checkout on `main` at commit 1 (an upgrade moves the branch too), the backend
    built from it (`up --build` recreates nothing when the image is unchanged), and drop the
    tables the migrations add."""
    git("checkout", "--quiet", "-B", "main", main)
    compose("up", "-d", "--no-deps", "--build", "backend")
    sql("DROP TABLE IF EXISTS app_settings, schema_migrations")
    wait_healthy(90)


@pytest.fixture
def app_checkout(sandbox: None) -> Iterator[tuple[str, str]]:
    """The checkout at commit 1 with the backend built from it, before and after the test."""
    main, nxt = git("rev-parse", "origin/main"), git("rev-parse", "origin/next")
    reset_app(main)
    yield main, nxt
    reset_app(main)


def test_upgrade_app_then_rollback_move_the_backend_between_two_commits(
    make_bot: Any, app_checkout: tuple[str, str]
) -> None:
    main, nxt = app_checkout
    bot = make_bot(hq_approvers="U0BOB")
    assert backend_health()["version"] == "0.1.0-sandbox"

    code, out = approve_on_console(bot, "upgrade app --ref next")
    assert code == 0, out
    assert f"from {main[:12]} to origin/next = {nxt[:12]} (1 commit)" in out, out
    assert "Harmoniq backend 0.2.0: app_settings table" in out
    assert "version 0.1.0-sandbox -> 0.2.0-sandbox" in out, out
    assert git("rev-parse", "HEAD") == nxt and git("rev-parse", "--abbrev-ref", "HEAD") == "main"
    health = backend_health()
    assert health["status"] == "ok" and health["version"] == "0.2.0-sandbox"
    versions = {row[0] for row in sql("SELECT version FROM schema_migrations")}
    assert versions == {"0001_schema_migrations", "0002_app_settings"}

    code, out = approve_on_console(bot, f"rollback {main[:7]}")
    assert code == 0, out
    assert f"Roll the app back from {nxt[:12]} to {main[:12]}, undoing 1 commit" in out, out
    assert "version 0.2.0-sandbox -> 0.1.0-sandbox" in out, out
    assert git("rev-parse", "HEAD") == main
    health = backend_health()
    assert health["status"] == "ok" and health["version"] == "0.1.0-sandbox"


def test_rollback_with_restore_puts_the_backup_back(
    make_bot: Any, app_checkout: tuple[str, str]
) -> None:
    main, _nxt = app_checkout
    bot = make_bot(hq_approvers="U0BOB")
    code, out = approve_on_console(bot, "upgrade app --ref next")
    assert code == 0, out
    code, out = run_console(bot, "/hq backup now")
    taken = re.search(r"Backup (\S+) done", out)
    assert code == 0 and taken, out
    sql("INSERT INTO app_settings (key, value) VALUES ('issue6', 'after the backup')")

    code, out = approve_on_console(bot, f"rollback {main} --restore {taken.group(1)}")
    assert code == 0, out
    assert f"restore: REPLACE the Harmoniq database with backup {taken.group(1)}" in out, out
    assert "OK      restore the backup" in out, out
    assert sql("SELECT key FROM app_settings") == []
    assert backend_health()["version"] == "0.1.0-sandbox"


def test_upgrade_infra_moves_redis_to_another_tag_and_back(make_bot: Any, sandbox: None) -> None:
    original = COMPOSE_FILE.read_bytes()
    bot = make_bot(hq_approvers="U0BOB")
    try:
        code, out = approve_on_console(bot, "upgrade infra redis bookworm-2")
        assert code == 0, out
        assert "Upgraded redis from hq-sandbox:bookworm to hq-sandbox:bookworm-2" in out, out
        assert "skipped: the service has pull_policy: never" in out, out
        assert "OK      redis: PING" in out, out
        image = docker("inspect", "--format", "{{.Config.Image}}", container_of("redis"))
        assert image.strip() == "hq-sandbox:bookworm-2"
        changed = COMPOSE_FILE.read_text().splitlines()
        diff = [ln for ln in changed if ln not in original.decode().splitlines()]
        assert diff == ["    image: hq-sandbox:bookworm-2"]

        code, out = approve_on_console(bot, "upgrade infra redis bookworm")
        assert code == 0, out
        image = docker("inspect", "--format", "{{.Config.Image}}", container_of("redis"))
        assert image.strip() == "hq-sandbox:bookworm"
    finally:
        COMPOSE_FILE.write_bytes(original)  # same image as the added line: no recreate
        compose("up", "-d", "--no-deps", "redis")
        wait_healthy(90)


def test_a_failed_infra_upgrade_puts_the_old_tag_back(make_bot: Any, sandbox: None) -> None:
    original = hashlib.sha256(COMPOSE_FILE.read_bytes()).hexdigest()
    bot = make_bot(hq_approvers="U0BOB", hq_gate_timeout=20)
    code, out = approve_on_console(bot, "upgrade infra redis no-such-tag")
    assert code == 1, out
    assert "Upgrade of redis to hq-sandbox:no-such-tag failed" in out, out
    assert "Put back: hq-sandbox:bookworm; redis is healthy with it again" in out, out
    assert hashlib.sha256(COMPOSE_FILE.read_bytes()).hexdigest() == original
    image = docker("inspect", "--format", "{{.Config.Image}}", container_of("redis"))
    assert image.strip() == "hq-sandbox:bookworm"
    wait_healthy(90)


def test_upgrade_infra_postgres_takes_a_backup_first(make_bot: Any, sandbox: None) -> None:
    original = COMPOSE_FILE.read_bytes()
    bot = make_bot(hq_approvers="U0BOB")
    try:
        code, out = approve_on_console(bot, "upgrade infra postgres bookworm-2")
        assert code == 0, out
        assert "take a full database backup first" in out, out
        assert re.search(r"OK      full database backup: Backup \S+ done", out), out
        assert re.search(r"OK      postgres: SELECT version\(\): PostgreSQL 15", out), out
        image = docker("inspect", "--format", "{{.Config.Image}}", container_of("postgres"))
        assert image.strip() == "hq-sandbox:bookworm-2"
    finally:
        COMPOSE_FILE.write_bytes(original)
        compose("up", "-d", "--no-deps", "postgres")
        wait_healthy(120)
