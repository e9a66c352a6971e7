"""Issue 6: secret rotation against the sandbox, through the approval path.

Every rotation runs once through signed Slack requests into a real `hq-bot serve --http`
process (requester alice, approver bob), and everything that process sent to Slack, logged and
wrote to its audit trail is searched for the old and the new secret values. Two rotations are
made to fail in the middle, through the console door: the old secret must come back, with a
healthy backend, and the result must say so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from minio import Minio
from minio.error import S3Error

from bot.core import Bot
from bot.slack import APPROVE_ACTION
from commands import deploy, rotate
from commands.deploy import Gate
from commands.infra.envfile import parse_env
from commands.infra.http import Http
from commands.infra.turn import Turn
from commands.redact import fingerprint
from tests.conftest import TEST_BOT_TOKEN, TEST_SIGNING_SECRET
from tests.fakeslack import FakeSlack, block_actions_body, post_signed, slash_command_body
from tests.integration.botproc import Server
from tests.integration.conftest import DEPLOY_DIR, ROOT, SANDBOX_ENV, run_console, wait_healthy

pytestmark = pytest.mark.integration

ENV_FILE = DEPLOY_DIR / ".env"
AUDIT_KEY = "rotate-audit-key-0123456789abcdef0123"
SECRET_KEYS = ("JWT_SECRET", "DB_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "COTURN_SECRET")
REQUEST_ID = re.compile(r"rq-[0-9a-f]{10}")
KNOWN_PASSWORD = "issue6-Known-Password-0123456789-abcdefXYZ"


def env_values() -> dict[str, str]:
    return parse_env(ENV_FILE.read_text())


def backend_health() -> dict[str, Any]:
    resp = Http(5).get("http://127.0.0.1:54000/health")
    body: dict[str, Any] = resp.json()
    body["http_status"] = resp.status
    return body


def jwt_fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def pg_login(password: str) -> str:
    """Log in as DB_USER over TCP; return "ok", "auth-failed" or "refused"."""
    values = env_values()
    try:
        conn = psycopg.connect(
            host="127.0.0.1",
            port=55432,
            user=values["DB_USER"],
            password=password,
            dbname=values["DB_NAME"],
            connect_timeout=5,
        )
    except psycopg.OperationalError as exc:
        return "auth-failed" if "password authentication failed" in str(exc) else "refused"
    conn.close()
    return "ok"


def s3_lists(access: str, secret: str) -> str:
    """List the uploads bucket with a key pair; return "ok" or the S3 error code."""
    client = Minio("127.0.0.1:59000", access_key=access, secret_key=secret, secure=False)
    try:
        list(client.list_objects("harmoniq-uploads"))
    except S3Error as exc:
        return str(exc.code)
    return "ok"


def leaks(text: str, secrets: dict[str, list[str]]) -> list[str]:
    """Return the names (never the values) of the secrets found in ``text``."""
    return sorted({name for name, values in secrets.items() for v in values if v and v in text})


def approve_on_console(bot: Bot, text: str) -> tuple[int, str]:
    """alice asks for ``text``; bob approves it on the console. Return (exit code, output)."""
    _, asked = run_console(bot, f"/hq {text} --reason 'issue 6 test'", user="alice")
    found = REQUEST_ID.search(asked)
    assert found, asked
    code, done = run_console(bot, f"/hq approve {found.group(0)}", user="U0BOB")
    return code, asked + done


# --- every rotation through Slack, and nothing leaks ---------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack(token=TEST_BOT_TOKEN, users={"U0ALICE": "alice", "U0BOB": "bob"}) as fake:
        yield fake


@pytest.fixture
def bot_env(fake: FakeSlack, sandbox: None, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HQ_", "SLACK_"))}
    return {
        **base,
        "SLACK_BOT_TOKEN": TEST_BOT_TOKEN,
        "SLACK_SIGNING_SECRET": TEST_SIGNING_SECRET,
        "SLACK_API_URL": fake.base_url,
        "HQ_DATABASE_URL": f"sqlite:///{tmp_path}/hq-bot.db",
        "HQ_AUDIT_KEY": AUDIT_KEY,
        "HQ_APPROVERS": "U0BOB",
        "HQ_OPS_CHANNEL": "C0OPS",
        "HQ_LOG_LEVEL": "DEBUG",
    }


def _rotate_over_slack(server: Server, fake: FakeSlack, command: str, key: str) -> str:
    body = slash_command_body(
        f'{command} --reason "issue 6: rotate"',
        user_id="U0ALICE",
        response_url=fake.response_url("alice"),
    )
    status, reply, _ = post_signed(server.url, body, TEST_SIGNING_SECRET)
    assert status == 200, reply
    found = REQUEST_ID.search(reply.decode())
    assert found, reply
    click = block_actions_body(
        APPROVE_ACTION,
        found.group(0),
        user_id="U0BOB",
        user_name="bob",
        response_url=fake.response_url("bob"),
    )
    assert post_signed(server.url, click, TEST_SIGNING_SECRET).status == 200
    done = fake.wait_for(
        "chat.postMessage",
        lambda c: (
            f"Rotated {key}" in json.dumps(c.params) or f"Rotation of {key}" in json.dumps(c.params)
        ),
        timeout=240,
    )
    text = json.dumps(done.params)
    assert f"Rotated {key}" in text, text
    return text


def test_every_rotation_over_slack_works_and_no_secret_leaks(
    fake: FakeSlack, bot_env: dict[str, str], tmp_path: Path
) -> None:
    before = env_values()
    sessions = redis.Redis(host="127.0.0.1", port=56379, db=0)
    sessions.set("session:issue6", "alice")
    server = Server(bot_env, tmp_path, "rotate")
    try:
        _rotate_over_slack(server, fake, "rotate jwt --logout-all", "JWT_SECRET")
        after_jwt = env_values()
        health = backend_health()
        assert after_jwt["JWT_SECRET"] != before["JWT_SECRET"]
        assert health["jwt_secret_fingerprint"] == jwt_fingerprint(after_jwt["JWT_SECRET"])
        assert health["http_status"] == 200 and health["status"] == "ok"
        assert sessions.get("session:issue6") is None

        _rotate_over_slack(server, fake, "rotate db-password", "DB_PASSWORD")
        after_db = env_values()
        assert after_db["DB_PASSWORD"] != before["DB_PASSWORD"]
        assert pg_login(before["DB_PASSWORD"]) == "auth-failed"
        assert pg_login(after_db["DB_PASSWORD"]) == "ok"
        assert backend_health()["postgres"]["ok"] is True

        _rotate_over_slack(server, fake, "rotate minio-keys", "MINIO_ACCESS_KEY")
        after_minio = env_values()
        assert after_minio["MINIO_ACCESS_KEY"] != before["MINIO_ACCESS_KEY"]
        assert s3_lists(after_minio["MINIO_ACCESS_KEY"], after_minio["MINIO_SECRET_KEY"]) == "ok"
        assert s3_lists(before["MINIO_ACCESS_KEY"], before["MINIO_SECRET_KEY"]) in {
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        }

        _rotate_over_slack(server, fake, "rotate turn-secret", "COTURN_SECRET")
        after = env_values()
        turn = Turn("127.0.0.1", 53478, 5)
        assert turn.check_secret(after["COTURN_SECRET"]).accepted
        assert not turn.check_secret(before["COTURN_SECRET"]).accepted
    finally:
        server.stop()
    assert backend_health()["status"] == "ok"

    # Every other line of .env is as it was.
    kept = {k: v for k, v in before.items() if k not in SECRET_KEYS}
    assert {k: v for k, v in after.items() if k not in SECRET_KEYS} == kept
    assert oct(ENV_FILE.stat().st_mode & 0o777) == "0o600"

    values = {k: [before[k], after[k]] for k in SECRET_KEYS}
    slack_text = fake.all_text()
    log_text = Path(server.log.name).read_text()
    export = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--env-file", str(SANDBOX_ENV), "audit", "export",
         "--format", "jsonl"],
        env=bot_env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "rotate jwt" in slack_text and "execution.started" in export
    assert log_text.count("\n") > 5 and '"level": "debug"' in log_text
    assert leaks(slack_text, values) == [], "a secret reached Slack"
    assert leaks(log_text, values) == [], "a secret reached the log"
    assert leaks(export, values) == [], "a secret reached the audit trail"
    assert "[redacted]" not in slack_text, "a message was worded so the redactor masked part of it"
    for name in SECRET_KEYS:  # fingerprints are what is shown instead
        assert fingerprint(after[name]) in slack_text, name


# --- failures in the middle are undone -----------------------------------------------------------
def test_a_jwt_the_backend_cannot_start_with_is_rotated_back(
    make_bot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = env_values()
    # The sandbox backend, like a real one, refuses a JWT secret shorter than 32 characters.
    monkeypatch.setattr(rotate, "new_jwt_secret", lambda: "too-short-jwt-secret")
    bot = make_bot(hq_approvers="U0BOB", hq_gate_timeout=30)
    code, out = approve_on_console(bot, "rotate jwt")
    assert code == 1, out
    assert "Rotation of JWT_SECRET failed" in out and "Put back: the old value" in out, out
    assert "backend healthy, new JWT fingerprint" in out and "restarting" in out, out
    assert "FAIL" in out and "OK      backend healthy, old JWT fingerprint" in out, out
    after = env_values()
    assert after == before
    health = backend_health()
    assert health["status"] == "ok"
    assert health["jwt_secret_fingerprint"] == jwt_fingerprint(before["JWT_SECRET"])
    assert "too-short-jwt-secret" not in out
    wait_healthy(60)


def test_a_db_password_rotation_that_fails_its_health_gate_is_rotated_back(
    make_bot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = env_values()
    real_gate = deploy.backend_gate
    calls: list[str | None] = []

    def first_gate_fails(ctx: Any, *, jwt: str | None, timeout: float, old_ids: Any = ()) -> Gate:
        calls.append(jwt)
        if len(calls) == 1:
            return Gate(False, "the backend did not come up (injected)", 0.0)
        return real_gate(ctx, jwt=jwt, timeout=timeout, old_ids=old_ids)

    monkeypatch.setattr(deploy, "backend_gate", first_gate_fails)
    monkeypatch.setattr(rotate, "new_db_password", lambda: KNOWN_PASSWORD)
    bot = make_bot(hq_approvers="U0BOB")
    code, out = approve_on_console(bot, "rotate db-password")
    assert code == 1, out
    assert "Rotation of DB_PASSWORD failed" in out and "injected" in out, out
    assert "Put back: the old value" in out, out
    assert "OK      put the old password verifier back" in out, out
    assert "OK      the old password logs in again" in out, out
    assert len(calls) == 2
    assert env_values() == before
    assert pg_login(before["DB_PASSWORD"]) == "ok"
    assert pg_login(KNOWN_PASSWORD) == "auth-failed"
    health = backend_health()
    assert health["status"] == "ok" and health["postgres"]["ok"] is True
    wait_healthy(60)
