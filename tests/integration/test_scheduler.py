"""Issue 7: scheduled jobs through real processes, alerts on the sandbox's Redis, replicas on
one PostgreSQL database, /metrics."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from tests.conftest import TEST_BOT_TOKEN, TEST_SIGNING_SECRET
from tests.fakeslack import FakeSlack, post_signed, slash_command_body
from tests.integration.botproc import Server, bot_env
from tests.integration.conftest import ROOT, SANDBOX_ENV


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack(token=TEST_BOT_TOKEN, users={"U0ALICE": "alice"}) as fake:
        yield fake


@pytest.fixture
def env(fake: FakeSlack, pg_url: str, sandbox: None) -> dict[str, str]:
    return bot_env(fake.base_url, pg_url)


def _run_job(env: dict[str, str], name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "--env-file", str(SANDBOX_ENV), "run-job", name],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_replicas_run_a_due_job_once_and_the_survivor_takes_over(
    env: dict[str, str], fake: FakeSlack, tmp_path: Path
) -> None:
    env = {**env, "HQ_SCHEDULE_METRICS": "*/2 * * * * *", "HQ_LEADER_POLL_SECONDS": "0.5"}
    engine = create_engine(env["HQ_DATABASE_URL"])
    a = Server(env, tmp_path, "a")
    b = Server(env, tmp_path, "b")
    survivor = None
    try:
        time.sleep(7)
        with engine.connect() as conn:
            before = conn.execute(
                text("SELECT due_at, runner FROM job_runs WHERE job = 'metrics' ORDER BY due_at")
            ).all()
        assert len(before) >= 2, (a.log_text(), b.log_text())
        runners = {r.runner for r in before}
        assert len(runners) == 1  # one leader ran them all
        leader_pid = int(next(iter(runners)).split(":")[1])
        leader, survivor = (a, b) if a.proc.pid == leader_pid else (b, a)
        assert leader.proc.pid == leader_pid
        killed_at = dt.datetime.now(dt.UTC)
        leader.proc.kill()
        leader.proc.wait(10)
        time.sleep(8)
        with engine.connect() as conn:
            after = conn.execute(
                text(
                    "SELECT due_at, runner FROM job_runs WHERE job = 'metrics' AND due_at > :t "
                    "ORDER BY due_at"
                ),
                {"t": killed_at},
            ).all()
            dues = conn.execute(
                text("SELECT due_at, count(*) FROM job_runs WHERE job = 'metrics' GROUP BY due_at")
            ).all()
        assert after, survivor.log_text()
        assert {int(r.runner.split(":")[1]) for r in after} == {survivor.proc.pid}
        assert (after[0].due_at - killed_at).total_seconds() < 5  # taken over within seconds
        assert all(count == 1 for _, count in dues)
    finally:
        a.stop()
        b.stop()
        engine.dispose()


def test_redis_memory_over_the_threshold_fires_once_then_recovers_once(
    env: dict[str, str], fake: FakeSlack
) -> None:
    client = redis.Redis(host="127.0.0.1", port=56379)
    original = client.config_get("maxmemory")["maxmemory"]
    env = {**env, "HQ_ALERT_HOLD_SECONDS": "3", "HQ_ALERT_REPEAT_MINUTES": "60"}

    def alerts() -> list[str]:
        return [
            c.params.get("text", "")
            for c in fake.calls_to("chat.postMessage")
            if "Redis memory" in c.params.get("text", "")
        ]

    try:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", str(int(used / 0.9)))  # ~90 % used: over 80 %
        assert _run_job(env, "metrics").returncode == 0
        assert alerts() == []  # over, but not yet for the hold time
        time.sleep(3.2)
        assert _run_job(env, "metrics").returncode == 0
        assert len(alerts()) == 1 and "Redis memory" in alerts()[0] and "above 80" in alerts()[0]
        assert _run_job(env, "metrics").returncode == 0
        assert len(alerts()) == 1  # none while it stays there
        client.config_set("maxmemory", original)  # back to 256 MB: far under 75 %
        assert _run_job(env, "metrics").returncode == 0
        assert len(alerts()) == 2 and "recovered" in alerts()[1]
        assert _run_job(env, "metrics").returncode == 0
        assert len(alerts()) == 2
    finally:
        client.config_set("maxmemory", original)


def test_run_job_digest_posts_the_digest(env: dict[str, str], fake: FakeSlack) -> None:
    proc = _run_job(env, "digest")
    assert proc.returncode in (0, 1), proc.stderr
    post = fake.wait_for("chat.postMessage", lambda c: "digest" in c.params.get("text", ""))
    body = json.dumps(post.params)
    for part in (
        "backend",
        "last database backup",
        "last MinIO mirror",
        "pending approvals",
        "Alerts, last 24 h",
    ):
        assert part in body, part


def test_run_job_tls_fires_for_a_certificate_about_to_expire(
    env: dict[str, str], fake: FakeSlack, tmp_path: Path
) -> None:
    from tests.unit.infra_servers import self_signed, tls_server

    cert, key, _ = self_signed(tmp_path, days=5)
    with tls_server(cert, key) as port:
        env = {**env, "HQ_TLS_ENDPOINTS": f"127.0.0.1:{port}"}
        assert _run_job(env, "tls").returncode == 0
    post = fake.wait_for("chat.postMessage", lambda c: "TLS 127.0.0.1" in c.params.get("text", ""))
    assert "under 14" in post.params["text"]


def test_metrics_parse_and_move_when_commands_run(
    env: dict[str, str], fake: FakeSlack, tmp_path: Path
) -> None:
    server = Server(env, tmp_path, "m")

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"{server.url_base}/metrics", timeout=5) as response:
            page = response.read().decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                key = sample.name + json.dumps(sample.labels, sort_keys=True)
                values[key] = sample.value
        return values

    try:
        first = scrape()
        for _ in range(3):
            body = slash_command_body("help", user_id="U0ALICE")
            assert post_signed(server.url, body, TEST_SIGNING_SECRET).status == 200
        post_signed(server.url, slash_command_body("nope", user_id="U0ALICE"), TEST_SIGNING_SECRET)
        second = scrape()
        help_key = 'hq_commands_total{"command": "help", "result": "succeeded"}'
        bad_key = 'hq_commands_total{"command": "(none)", "result": "rejected"}'
        assert second[help_key] - first.get(help_key, 0) == 3
        assert second[bad_key] - first.get(bad_key, 0) == 1
        with urllib.request.urlopen(f"{server.url_base}/healthz", timeout=5) as response:
            health = json.loads(response.read())
        assert health == {"ok": True, "database": "ok", "slack": "ok"}
    finally:
        server.stop()


def test_schedule_lists_jobs_with_next_run_and_last_result(
    env: dict[str, str], fake: FakeSlack
) -> None:
    assert _run_job(env, "metrics").returncode == 0
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--env-file", str(SANDBOX_ENV), "console"],
        input="/hq schedule\n",
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout
    for job in ("backup", "minio", "digest", "metrics", "tls"):
        assert f" {job}:" in out, out
    assert "next 2027-01-01" in out and "metric(s) evaluated" in out
    engine = create_engine(env["HQ_DATABASE_URL"])
    with engine.connect() as conn:
        states = conn.execute(
            text("SELECT state FROM operations WHERE command = 'job metrics'")
        ).all()
        kinds = conn.execute(text("SELECT kind FROM audit_events WHERE command = 'metrics'")).all()
    engine.dispose()
    assert [s for (s,) in states] == ["succeeded"]  # every run is an operation...
    assert ("job",) in kinds  # ...and an audit event
