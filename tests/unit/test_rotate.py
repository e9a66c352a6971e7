"""`/hq rotate ...` (issue 6) against a deployment simulated in memory: compose recreates a
service with the values .env has at that moment, the backend answers /health with the
fingerprint of the JWT secret it started with, and can be told to refuse to start. The database
password rotation runs against a real PostgreSQL that authenticates with SCRAM."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from minio.error import S3Error

from approvals.db import make_engine, upgrade
from commands import deploy, rotate
from commands.infra.compose import ComposeArgv
from commands.infra.docker_engine import ContainerInfo
from commands.infra.envfile import EnvFile, is_secret_key, parse_env
from commands.infra.gateway import Completed
from commands.infra.http import HttpError, Response
from commands.infra.turn import CredentialCheck
from commands.parser import parse
from commands.redact import fingerprint
from commands.registry import REGISTRY
from commands.spec import Actor, Plan, Result, UserError
from tests.pgcluster import Cluster

ENV_TEXT = """\
# Harmoniq (test)
COMPOSE_PROJECT_NAME=hq-test
DB_USER=harmoniq
DB_NAME=harmoniq
DB_PASSWORD=old-db-password-0001
JWT_SECRET=old-jwt-secret-0000000000000000000000000001
MINIO_ACCESS_KEY=OLDACCESSKEY00000001
MINIO_SECRET_KEY=old-minio-secret-key-0001
COTURN_SECRET=old-coturn-secret-0001
"""
SERVICES = ("backend", "postgres", "redis", "minio", "coturn")


@dataclass
class Ctx:
    settings: Any
    infra: Any = None
    actor: Actor = field(default_factory=lambda: Actor("U0TEST", "alice", "C1", "console"))
    operation_id: str = "op-test"
    governance: Any = None
    registry: Any = field(default_factory=lambda: REGISTRY)


def governance(folder: Path) -> Any:
    """The part of hq-bot's governance the deployment's change lock needs: its database."""
    engine = make_engine(f"sqlite:///{folder}/hq-bot.db")
    upgrade(engine)
    return type("Governance", (), {"engine": engine})()


class FakeDeployment:
    """Compose, Docker Engine and the backend's /health of a deployment, in memory."""

    def __init__(self, env_path: Path, project: str) -> None:
        self.env = EnvFile(env_path)
        self.project = project
        self.calls: list[tuple[str, ...]] = []
        self.serial = 0
        self.running: dict[str, dict[str, str]] = {}
        self.state: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        self.images: dict[str, str] = {s: "hq-sandbox:bookworm" for s in SERVICES}
        # Given the env a backend starts with, return True when it refuses to start.
        self.backend_refuses: Callable[[dict[str, str]], bool] = lambda env: False
        self.fail_next_up = ""
        for service in SERVICES:
            self.recreate(service)
        self.calls.clear()

    # --- compose ---
    def run(self, argv: tuple[str, ...], timeout: float | None = None) -> Completed:
        self.calls.append(tuple(argv))
        if self.fail_next_up and "up" in argv:
            message, self.fail_next_up = self.fail_next_up, ""
            raise UserError(message)
        if "up" in argv:
            services = [w for w in argv[argv.index("up") + 1 :] if not w.startswith("-")]
            for service in services:
                if "--force-recreate" in argv or self.images_changed(service):
                    self.recreate(service)
        return Completed(tuple(argv), 0, b"", b"", 0.1)

    def images_changed(self, service: str) -> bool:
        return False

    def recreate(self, service: str) -> None:
        self.serial += 1
        self.ids[service] = f"{service}-{self.serial:04d}"
        values = self.env.read()
        self.running[service] = values
        refuses = service == "backend" and self.backend_refuses(values)
        self.state[service] = "restarting" if refuses else "running"

    # --- Docker Engine ---
    def containers(self, service: str | None = None, *, all: bool = True) -> list[ContainerInfo]:
        names = [service] if service else list(SERVICES)
        return [
            ContainerInfo(
                id=self.ids[s],
                name=f"{self.project}-{s}-1",
                service=s,
                state=self.state[s],
                health="healthy" if self.state[s] == "running" else "",
                image=self.images[s],
            )
            for s in names
        ]

    def inspect(self, container_id: str) -> dict[str, Any]:
        return {"State": {"ExitCode": 2}, "RestartCount": 3}

    # --- HTTP (the backend's /health) ---
    def get(self, url: str, **_: Any) -> Response:
        if self.state["backend"] != "running":
            raise HttpError(f"{url} is unreachable: Connection refused.")
        jwt = self.running["backend"]["JWT_SECRET"]
        pg_ok = self.running["backend"]["DB_PASSWORD"] == self.env.read()["DB_PASSWORD"]
        body = {
            "status": "ok" if pg_ok else "degraded",
            "postgres": {"ok": pg_ok, "detail": "PostgreSQL 15"},
            "redis": {"ok": True, "detail": "Redis 7"},
            "jwt_secret_fingerprint": hashlib.sha256(jwt.encode()).hexdigest()[:16],
            "version": "0.1.0-test",
        }
        return Response(url, 200 if pg_ok else 503, json.dumps(body).encode(), {}, 0.01)


class FakeRedisClient:
    def __init__(self) -> None:
        self.keys = {"session:a": "1", "session:b": "2"}

    def dbsize(self) -> int:
        return len(self.keys)

    def flushdb(self) -> None:
        self.keys.clear()


@dataclass
class FakeS3:
    resets: int = 0

    def reset(self) -> None:
        self.resets += 1


@dataclass
class Infra:
    env: EnvFile
    compose: FakeDeployment
    docker: FakeDeployment
    http: FakeDeployment
    redis: Any
    s3: FakeS3


@pytest.fixture
def world(tmp_path: Path, make_settings: Any) -> Any:
    env_path = tmp_path / ".env"
    env_path.write_text(ENV_TEXT)
    env_path.chmod(0o600)
    settings = make_settings(
        hq_env_file=env_path,
        hq_compose_file=tmp_path / "docker-compose.yml",
        hq_compose_project="hq-test",
        hq_gate_timeout=2,
        hq_turn_address="127.0.0.1:53478",
    )
    fake = FakeDeployment(env_path, "hq-test")
    redis_client = FakeRedisClient()
    infra = Infra(
        EnvFile(env_path),
        fake,
        fake,
        fake,
        type("R", (), {"client": redis_client})(),
        FakeS3(),
    )
    ctx = Ctx(settings, infra, governance=governance(tmp_path))
    return type("World", (), {"ctx": ctx, "fake": fake, "env": env_path, "redis": redis_client})


def plan_of(world: Any, text: str) -> Plan:
    parsed = parse(text, REGISTRY)
    return parsed.spec.plan(parsed.args, world.ctx)


def run(world: Any, text: str) -> tuple[Result, list[str]]:
    plan = plan_of(world, text)
    lines: list[str] = []
    result = rotate.execute(plan, world.ctx, lines.append)
    return result, lines


def recreate_argv(world: Any, *services: str) -> tuple[str, ...]:
    return ComposeArgv.from_settings(world.ctx.settings).up(
        list(services), no_deps=True, force_recreate=True
    )


def shown_text(result: Result, lines: list[str]) -> str:
    rows = [f"{r.name} {r.detail}" for r in result.rows]
    return "\n".join([result.title, result.text, *rows, *lines])


def assert_no_values(text: str, *values: str) -> None:
    found = [n for n, v in enumerate(values) if v in text]
    assert found == [], f"secret value number {found} appears"


# --- new values and plans -------------------------------------------------------------------------
def test_new_values_have_the_documented_shapes() -> None:
    jwt = rotate.new_jwt_secret()
    assert len(base64.b64decode(jwt, validate=True)) == 48
    password = rotate.new_db_password()
    assert len(password) == 43 and re.fullmatch(r"[A-Za-z0-9_-]+", password)
    access, secret = rotate.new_minio_keys()
    assert len(access) == 20 and set(access) <= set(string.ascii_uppercase + string.digits)
    assert len(secret) == 40 and re.fullmatch(r"[A-Za-z0-9_-]+", secret)
    assert re.fullmatch(r"[0-9a-f]{64}", rotate.new_turn_secret())
    assert rotate.new_jwt_secret() != jwt and rotate.new_db_password() != password


def test_the_jwt_plan_binds_the_fingerprint_and_the_exact_argv_never_a_value(world: Any) -> None:
    plan = plan_of(world, "rotate jwt")
    old = "old-jwt-secret-0000000000000000000000000001"
    assert plan.data["current"] == {"JWT_SECRET": fingerprint(old)}
    assert plan.data["recreate"] == list(recreate_argv(world, "backend"))
    assert plan.steps[2].argv == (
        "docker", "compose", "-p", "hq-test", "-f", str(world.ctx.settings.hq_compose_file),
        "up", "-d", "--no-deps", "--force-recreate", "backend",
    )  # fmt: skip
    assert fingerprint(old) in plan.summary
    secrets = [v for k, v in parse_env(ENV_TEXT).items() if is_secret_key(k)]
    assert_no_values(plan.canonical() + plan.as_text(), *secrets)
    assert plan_of(world, "rotate jwt").digest() == plan.digest()


def test_the_plan_changes_when_the_secret_changed(world: Any) -> None:
    before = plan_of(world, "rotate db-password").digest()
    world.ctx.infra.env.update({"DB_PASSWORD": "changed-by-someone-else"})
    assert plan_of(world, "rotate db-password").digest() != before


def test_each_rotation_plans_its_services_and_checks(world: Any) -> None:
    minio = plan_of(world, "rotate minio-keys")
    assert minio.data["recreate"] == list(recreate_argv(world, "minio", "backend"))
    assert "the old keys are refused" in minio.as_text()
    turn = plan_of(world, "rotate turn-secret")
    assert turn.data["services"] == ["coturn"] and "127.0.0.1:53478" in turn.as_text()
    db = plan_of(world, "rotate db-password")
    assert "ALTER ROLE harmoniq PASSWORD '<SCRAM-SHA-256 verifier" in db.as_text()
    assert plan_of(world, "rotate jwt").data["logout_all"] is False
    flush = plan_of(world, "rotate jwt --logout-all")
    assert flush.steps[4].argv == ("redis-cli", "FLUSHDB") and flush.data["logout_all"] is True


def test_a_plan_needs_the_key_in_env(world: Any) -> None:
    world.env.write_text(ENV_TEXT.replace("COTURN_SECRET", "# COTURN_SECRET"))
    with pytest.raises(UserError) as info:
        plan_of(world, "rotate turn-secret")
    assert "does not set COTURN_SECRET" in info.value.message


def test_rotations_need_a_second_person() -> None:
    names = ["rotate jwt", "rotate db-password", "rotate minio-keys", "rotate turn-secret"]
    assert all(REGISTRY[n].destructive for n in names)


# --- JWT ------------------------------------------------------------------------------------------
def test_a_jwt_rotation_writes_env_recreates_the_backend_and_checks_it(world: Any) -> None:
    result, lines = run(world, "rotate jwt")
    assert result.ok, result
    new = parse_env(world.env.read_text())["JWT_SECRET"]
    old = "old-jwt-secret-0000000000000000000000000001"
    assert new != old and len(base64.b64decode(new)) == 48
    assert world.fake.calls == [recreate_argv(world, "backend")]
    assert world.fake.running["backend"]["JWT_SECRET"] == new
    expected = ENV_TEXT.replace(old, new)
    assert world.env.read_text() == expected and world.env.stat().st_mode & 0o777 == 0o600
    assert fingerprint(new) in result.title and fingerprint(old) in result.title
    assert [r.name for r in result.rows] == [
        "write JWT_SECRET to .env",
        "recreate backend",
        "backend healthy, new JWT fingerprint",
    ]
    assert world.redis.keys  # no --logout-all: sessions stay
    assert_no_values(shown_text(result, lines), new, old)


def test_logout_all_flushes_the_session_store_after_the_backend_is_healthy(world: Any) -> None:
    result, _ = run(world, "rotate jwt --logout-all")
    assert result.ok, result
    assert world.redis.keys == {}
    assert result.rows[-1].name == "flush the session store"


def test_a_backend_that_cannot_start_with_the_new_secret_gets_the_old_one_back(
    world: Any,
) -> None:
    old = "old-jwt-secret-0000000000000000000000000001"
    world.fake.backend_refuses = lambda env: env["JWT_SECRET"] != old
    result, lines = run(world, "rotate jwt --logout-all")
    assert not result.ok and result.data["restored"] is True
    assert "Rotation of JWT_SECRET failed" in result.title and "Put back" in result.title
    assert "restarting, exit code 2" in result.title
    assert world.env.read_text() == ENV_TEXT
    assert world.fake.calls == [recreate_argv(world, "backend")] * 2
    assert world.fake.running["backend"]["JWT_SECRET"] == old
    assert world.fake.state["backend"] == "running"
    assert world.redis.keys  # nothing flushed: the rotation did not happen
    statuses = [(r.name, r.status.value) for r in result.rows]
    assert statuses[-3:] == [
        ("put the old JWT_SECRET back in .env", "ok"),
        ("recreate backend again", "ok"),
        ("backend healthy, old JWT fingerprint", "ok"),
    ]
    assert_no_values(shown_text(result, lines), old)


def test_a_failed_undo_is_reported_as_such(world: Any) -> None:
    world.fake.backend_refuses = lambda env: True
    world.ctx.settings.hq_gate_timeout = 1
    result, _ = run(world, "rotate jwt")
    assert not result.ok and result.data["restored"] is False
    assert "did not fully work" in result.title and "/hq health" in result.title


def test_a_recreate_that_fails_is_undone(world: Any) -> None:
    world.fake.fail_next_up = "compose up failed"
    result, _ = run(world, "rotate jwt")
    assert not result.ok and result.data["restored"] is True
    assert world.env.read_text() == ENV_TEXT
    assert "recreate backend" in result.title


def test_nothing_runs_when_hq_bots_environment_sets_a_key_of_env(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_of(world, "rotate jwt")
    monkeypatch.setenv("JWT_SECRET", "from-the-bots-environment")
    with pytest.raises(UserError) as info:
        rotate.execute(plan, world.ctx, lambda _line: None)
    assert "environment sets JWT_SECRET" in info.value.message
    assert "from-the-bots-environment" not in info.value.message
    assert world.env.read_text() == ENV_TEXT and world.fake.calls == []


def test_only_one_change_to_the_deployment_runs_at_a_time(world: Any) -> None:
    plan = plan_of(world, "rotate jwt")
    bob = Ctx(
        world.ctx.settings,
        governance=world.ctx.governance,
        actor=Actor("U0BOB", "bob", "C1", "slack"),
        operation_id="op-bob",
    )
    with deploy.exclusive(bob, "upgrade app"), pytest.raises(UserError) as info:
        rotate.execute(plan, world.ctx, lambda _line: None)
    message = info.value.message
    assert message.startswith("Another change to the deployment (a rotation, upgrade or ")
    assert "already running: bob (upgrade app), operation op-bob, since " in message
    assert world.env.read_text() == ENV_TEXT and world.fake.calls == []
    # released with the block: the rotation runs now
    result, _lines = run(world, "rotate jwt")
    assert result.ok, result.title


def test_the_change_lock_holds_across_replicas_sharing_the_database(world: Any) -> None:
    """Another hq-bot process (its own engine on the same database) holds the lock."""
    other = make_engine(str(world.ctx.governance.engine.url))
    replica = Ctx(
        world.ctx.settings,
        governance=type("Governance", (), {"engine": other})(),
        actor=Actor("U0BOB", "bob", "C1", "slack"),
        operation_id="op-replica",
    )
    with (
        deploy.exclusive(replica, "rollback"),
        pytest.raises(UserError, match=r"bob \(rollback\), operation op-replica"),
    ):
        run(world, "rotate jwt")
    assert world.env.read_text() == ENV_TEXT
    other.dispose()


def test_a_secret_changed_after_the_plan_is_not_rotated(world: Any) -> None:
    plan = plan_of(world, "rotate jwt")
    world.ctx.infra.env.update({"JWT_SECRET": "rotated-by-hand-meanwhile-0000000000000"})
    with pytest.raises(UserError) as info:
        rotate.execute(plan, world.ctx, lambda _line: None)
    assert "changed since the plan" in info.value.message
    assert world.fake.calls == []


# --- MinIO keys and TURN --------------------------------------------------------------------------
class KeyCheckingS3:
    """What `_s3_with` returns: lists the bucket only with the key pair minio runs with."""

    def __init__(self, fake: FakeDeployment, access: str, secret: str, lenient: bool) -> None:
        self.fake, self.keys, self.lenient = fake, (access, secret), lenient
        self.bucket, self.endpoint = "harmoniq-uploads", "http://127.0.0.1:59000"
        self.client = self

    def list_objects(self, bucket: str) -> Iterator[Any]:
        running = self.fake.running["minio"]
        if self.lenient or self.keys == (running["MINIO_ACCESS_KEY"], running["MINIO_SECRET_KEY"]):
            return iter([])
        raise S3Error(None, "InvalidAccessKeyId", "unknown key", f"/{bucket}", "r", "h")  # type: ignore[arg-type]


def test_a_minio_key_rotation_proves_both_pairs_and_switches_the_bots_client(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        rotate, "_s3_with", lambda ctx, a, s: KeyCheckingS3(world.fake, a, s, lenient=False)
    )
    result, lines = run(world, "rotate minio-keys")
    assert result.ok, result
    values = parse_env(world.env.read_text())
    assert values["MINIO_ACCESS_KEY"] != "OLDACCESSKEY00000001"
    assert world.fake.calls == [recreate_argv(world, "minio", "backend")]
    rows = {r.name: r.detail for r in result.rows}
    assert rows["the old keys are refused"] == "refused (InvalidAccessKeyId)"
    assert world.ctx.infra.s3.resets == 1
    assert_no_values(shown_text(result, lines), values["MINIO_SECRET_KEY"], "old-minio-secret-key")


def test_old_minio_keys_that_still_work_undo_the_rotation(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        rotate, "_s3_with", lambda ctx, a, s: KeyCheckingS3(world.fake, a, s, lenient=True)
    )
    result, _ = run(world, "rotate minio-keys")
    assert not result.ok and result.data["restored"] is True
    assert "the old keys still work" in result.title
    assert world.env.read_text() == ENV_TEXT
    assert world.fake.calls == [recreate_argv(world, "minio", "backend")] * 2


def test_a_turn_secret_rotation_checks_the_new_and_the_old_secret(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Turn:
        def check_secret(self, secret: str) -> CredentialCheck:
            ok = secret == world.fake.running["coturn"]["COTURN_SECRET"]
            return CredentialCheck(ok, "an Allocate succeeded" if ok else "answered 401")

    monkeypatch.setattr(rotate, "_turn", lambda ctx: Turn())
    result, _ = run(world, "rotate turn-secret")
    assert result.ok, result
    assert [r.name for r in result.rows][-3:] == [
        "coturn runs and is healthy",
        "TURN: the new COTURN_SECRET is accepted",
        "TURN: the old COTURN_SECRET is refused",
    ]
    assert world.fake.calls == [recreate_argv(world, "coturn")]


# --- database password, against a real PostgreSQL with SCRAM --------------------------------------
@pytest.fixture(scope="module")
def scram_cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    cluster.start()
    try:
        with psycopg.connect(
            host="127.0.0.1", port=cluster.port, user="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE ROLE harmoniq LOGIN PASSWORD 'old-db-password-0001'")
            conn.execute("CREATE DATABASE harmoniq OWNER harmoniq")
            conn.execute("ALTER SYSTEM SET log_statement = 'all'")
            hba = cluster.data / "pg_hba.conf"
            hba.write_text(
                "local all all trust\n"
                "host all postgres 127.0.0.1/32 trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            )
            conn.execute("SELECT pg_reload_conf()")
        yield cluster
    finally:
        cluster.stop()


def _login(cluster: Cluster, password: str) -> bool:
    try:
        psycopg.connect(
            host="127.0.0.1", port=cluster.port, user="harmoniq", password=password,
            dbname="harmoniq", connect_timeout=5,
        ).close()  # fmt: skip
    except psycopg.OperationalError:
        return False
    return True


def _set_password(cluster: Cluster, password: str) -> None:
    with psycopg.connect(
        host="127.0.0.1", port=cluster.port, user="postgres", autocommit=True
    ) as conn:
        conn.execute(f"ALTER ROLE harmoniq PASSWORD '{password}'")


def test_a_db_password_rotation_uses_a_verifier_and_proves_both_logins(
    world: Any, scram_cluster: Cluster
) -> None:
    _set_password(scram_cluster, "old-db-password-0001")
    world.ctx.settings.hq_postgres_port = scram_cluster.port
    result, lines = run(world, "rotate db-password")
    assert result.ok, result
    new = parse_env(world.env.read_text())["DB_PASSWORD"]
    assert _login(scram_cluster, new) and not _login(scram_cluster, "old-db-password-0001")
    rows = {r.name: r.detail for r in result.rows}
    # harmoniq may not read pg_authid here: the old verifier is derived from the old password
    assert "derived from the old password" in rows["ALTER ROLE harmoniq (SCRAM verifier)"]
    assert rows["the old password is refused"] == "password authentication failed, as it should"
    log = scram_cluster.log.read_text()
    assert "ALTER ROLE" in log and "SCRAM-SHA-256$4096:" in log
    assert new not in log  # the server only ever saw the verifier
    assert world.fake.calls == [recreate_argv(world, "backend")]
    assert_no_values(shown_text(result, lines), new, "old-db-password-0001")


def test_a_failed_db_password_rotation_puts_the_old_verifier_back(
    world: Any, scram_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_password(scram_cluster, "old-db-password-0001")
    world.ctx.settings.hq_postgres_port = scram_cluster.port
    monkeypatch.setattr(rotate, "new_db_password", lambda: "known-new-password-0123456789")
    world.fake.backend_refuses = lambda env: env["DB_PASSWORD"] != "old-db-password-0001"
    result, _ = run(world, "rotate db-password")
    assert not result.ok and result.data["restored"] is True, result
    assert _login(scram_cluster, "old-db-password-0001")
    assert not _login(scram_cluster, "known-new-password-0123456789")
    assert world.env.read_text() == ENV_TEXT
    names = [r.name for r in result.rows]
    assert names[-5:] == [
        "put the old password verifier back",
        "put the old DB_PASSWORD back in .env",
        "recreate backend again",
        "the old password logs in again",
        "backend healthy, old DB_PASSWORD in use",
    ]


def test_a_db_password_rotation_that_cannot_log_in_changes_nothing(
    world: Any, scram_cluster: Cluster
) -> None:
    _set_password(scram_cluster, "not-the-env-password")
    world.ctx.settings.hq_postgres_port = scram_cluster.port
    result, _ = run(world, "rotate db-password")
    assert not result.ok
    assert "failed before anything was changed" in result.title
    assert "password authentication failed" in result.title
    assert world.env.read_text() == ENV_TEXT and world.fake.calls == []
    assert _login(scram_cluster, "not-the-env-password")


def test_a_container_stopped_by_someone_is_waited_for_but_a_crash_is_not(world: Any) -> None:
    codes = {"backend": 143}
    fake = world.fake
    fake.inspect = lambda cid: {"State": {"ExitCode": codes["backend"]}}
    fake.state["backend"] = "exited"
    assert deploy.crashed_reason(world.ctx, "backend") is None  # `docker stop`: may come back
    codes["backend"] = 1
    assert deploy.crashed_reason(world.ctx, "backend") == "hq-test-backend-1 is exited, exit code 1"
    fake.state["backend"] = "restarting"
    assert "restarting" in str(deploy.crashed_reason(world.ctx, "backend"))
    fake.state["backend"] = "running"
    assert deploy.crashed_reason(world.ctx, "backend") is None
