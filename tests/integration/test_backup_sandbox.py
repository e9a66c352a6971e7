"""Backups and restores end to end against the sandbox: its PostgreSQL, the S3 stand-in and the
Docker Engine, through the console door (parse, policy, approval, plan, worker pool).

Every test uses a bucket of its own (created by the backup, deleted afterwards) and drops the
tables it made."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.config import Config
from sqlalchemy import update

from approvals.models import Backup
from bot.console import ConsoleResponder, actor_for
from commands.infra.backup_store import Catalogue
from commands.infra.envfile import EnvFile
from tests.integration.conftest import DEPLOY_DIR, container_of, docker, run_console

pytestmark = pytest.mark.integration

APPROVER = "U0BOB"


def _env() -> dict[str, str]:
    return EnvFile(DEPLOY_DIR / ".env").read()


def pg(dbname: str | None = None) -> psycopg.Connection[Any]:
    env = _env()
    return psycopg.connect(
        host="127.0.0.1",
        port=55432,
        user=env["DB_USER"],
        password=env["DB_PASSWORD"],
        dbname=dbname or env["DB_NAME"],
        autocommit=True,
    )


def s3() -> Any:
    env = _env()
    return boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:59000",
        aws_access_key_id=env["MINIO_ACCESS_KEY"],
        aws_secret_access_key=env["MINIO_SECRET_KEY"],
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )


def digests(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Return schema.table -> md5 of all its rows in order: the full contents, compared."""
    tables = conn.execute(
        "SELECT schemaname, tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
    ).fetchall()
    out = {}
    for schema, table in tables:
        row = conn.execute(
            f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
            f'FROM "{schema}"."{table}" t'
        ).fetchone()
        out[f"{schema}.{table}"] = row[0] if row else ""
    return out


def pending_uploads(bucket: str) -> list[str]:
    return [u["Key"] for u in s3().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def objects(bucket: str) -> list[str]:
    return [o["Key"] for o in s3().list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.fixture
def bucket(sandbox: None) -> Iterator[str]:
    name = f"hq-it-backups-{uuid.uuid4().hex[:8]}"
    yield name
    client = s3()
    try:
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        for key in objects(name):
            client.delete_object(Bucket=name, Key=key)
        client.delete_bucket(Bucket=name)
    except client.exceptions.NoSuchBucket:
        pass


@pytest.fixture
def backup_bot(make_bot: Any, tmp_path: Path, bucket: str) -> Any:
    def make(**overrides: Any) -> Any:
        values = {
            "hq_backup_dir": str(tmp_path / "backups"),
            "hq_backup_bucket": bucket,
            "hq_approvers": APPROVER,
            "hq_restore_health_wait": 60,
        }
        values.update(overrides)
        return make_bot(**values)

    return make


@pytest.fixture
def table() -> Iterator[str]:
    """A table of this test's own, dropped afterwards."""
    name = f"hq_it_{uuid.uuid4().hex[:8]}"
    yield name
    with pg() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def fill(name: str, rows: int, width: int = 1) -> None:
    body = " || ".join(f"md5((g * {n + 1})::text)" for n in range(width))
    with pg() as conn:
        conn.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, body text)")
        conn.execute(f"INSERT INTO {name} SELECT g, {body} FROM generate_series(1, {rows}) g")


def count(name: str) -> int:
    with pg() as conn:
        row = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
    return int(row[0]) if row else -1


def catalogue(bot: Any) -> Catalogue:
    return Catalogue(bot.engine)


def request_and_approve(bot: Any, text: str) -> str:
    """Ask for a destructive command as alice, approve it as bob; return all the output."""
    _code, asked = run_console(bot, text)
    found = re.search(r"Request (rq-[0-9a-f]{10})", asked)
    assert found, asked
    _code, decided = run_console(bot, f"/as {APPROVER}\n/hq approve {found.group(1)}")
    return asked + decided


def started_at(service: str) -> str:
    return docker("inspect", "-f", "{{.State.StartedAt}} {{.State.Running}}", container_of(service))


def test_restore_round_trip_through_the_approval_path(
    backup_bot: Any, table: str, bucket: str
) -> None:
    bot = backup_bot()
    fill(table, 500)
    with pg() as conn:
        before = digests(conn)
    code, out = run_console(bot, "/hq backup now")
    assert code == 0, out
    info = catalogue(bot).listing()[0]
    assert f"Backup {info.id} done: " in out and f"sha256 {info.sha256[:12]}, verified" in out
    assert f"Where: file {info.path}, s3://{bucket}/db/{info.file_name}" in out
    assert info.table_counts[f"public.{table}"] == 500 and info.verified
    assert re.fullmatch(r"db_\d{8}_\d{6}\.dump", info.file_name)
    stored = s3().get_object(Bucket=bucket, Key=info.s3_key)["Body"].read()
    assert (
        hashlib.sha256(stored).hexdigest()
        == info.sha256
        == hashlib.sha256(Path(info.path).read_bytes()).hexdigest()
    )
    assert stored.startswith(b"PGDMP")

    with pg() as conn:  # after the backup: new rows, a deletion, a change
        conn.execute(f"INSERT INTO {table} SELECT g, 'late' FROM generate_series(501, 600) g")
        conn.execute(f"DELETE FROM {table} WHERE id <= 10")
        conn.execute(f"UPDATE {table} SET body = 'changed' WHERE id = 42")
    out = request_and_approve(bot, "/hq restore latest --reason 'round trip test'")
    assert f"Restored {info.id} (" in out and "the backend is healthy" in out, out
    for line in ("checking ", "is intact: sha256 matches", "safety backup b-", "stopping backend"):
        assert line in out, out
    with pg() as conn:
        after = digests(conn)
    assert {t: after.get(t) for t in before} == before
    assert count(table) == 500
    safety = [b for b in catalogue(bot).listing() if b.kind == "safety"]
    assert (
        len(safety) == 1 and safety[0].verified and safety[0].table_counts[f"public.{table}"] == 590
    )
    assert "true" in started_at("backend")


def test_a_corrupted_backup_is_refused_before_the_backend_is_stopped(
    backup_bot: Any, table: str
) -> None:
    bot = backup_bot()
    fill(table, 200)
    code, out = run_console(bot, "/hq backup now")
    assert code == 0, out
    info = catalogue(bot).listing()[0]
    data = bytearray(Path(info.path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(info.path).write_bytes(bytes(data))
    with pg() as conn:
        conn.execute(f"INSERT INTO {table} VALUES (999999, 'after the backup')")
        before = digests(conn)
    backend_before = started_at("backend")
    out = request_and_approve(bot, f"/hq restore {info.id} --reason 'corruption test'")
    refusal = f"Restore refused before anything was touched: The checksum of {info.id} does not"
    assert refusal in out and "match the catalogue" in out, out
    assert "The database was not changed. The backend is running." in out
    assert "- stopping backend" not in out and "- taking a safety backup" not in out
    assert started_at("backend") == backend_before
    with pg() as conn:
        assert digests(conn) == before
    assert [b.kind for b in catalogue(bot).listing()] == ["manual"]
    again = catalogue(bot).get(info.id)
    assert again is not None and not again.verified


def test_an_encrypted_backup_restores_and_a_truncated_one_is_detected(
    backup_bot: Any, table: str
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    bot = backup_bot(hq_backup_key=key)
    fill(table, 40_000, width=2)  # a dump of a few MiB: several 1 MiB chunks
    code, out = run_console(bot, "/hq backup now")
    assert code == 0 and "Encrypted: yes (AES-256-GCM)" in out, out
    info = catalogue(bot).listing()[0]
    assert info.encrypted and info.file_name.endswith(".dump.enc") and info.verified
    raw = Path(info.path).read_bytes()
    assert raw.startswith(b"HQBACKUP") and b"PGDMP" not in raw[:4096] and key not in out

    with pg() as conn:
        conn.execute(f"DELETE FROM {table} WHERE id > 100")
    out = request_and_approve(bot, "/hq restore latest --reason 'encrypted round trip'")
    assert f"Restored {info.id}" in out, out
    assert count(table) == 40_000

    # cut the file at a chunk boundary
    full = 1024 * 1024 + 16
    assert len(raw) > 32 + full
    cut = raw[: 32 + full]
    Path(info.path).write_bytes(cut)
    code, out = run_console(bot, f"/hq backup verify {info.id}")
    assert code == 1 and f"has {len(cut)} bytes; the catalogue recorded {info.size}" in out, out
    # even with a catalogue that agrees with the cut file, the format itself tells
    with bot.engine.begin() as conn:
        conn.execute(
            update(Backup)
            .where(Backup.id == info.id)
            .values(size=len(cut), sha256=hashlib.sha256(cut).hexdigest())
        )
    code, out = run_console(bot, f"/hq backup verify {info.id}")
    assert code == 1 and "truncated: it ends after 1 chunk without its final chunk" in out, out
    out = request_and_approve(bot, f"/hq restore {info.id} --reason 'truncated'")
    assert "Restore refused before anything was touched" in out and "truncated" in out, out


def test_a_dump_killed_midway_leaves_nothing_and_a_second_backup_is_told_who_runs(
    backup_bot: Any, table: str, bucket: str, tmp_path: Path
) -> None:
    bot = backup_bot()
    fill(table, 700_000, width=3)  # about 200 MiB: the dump takes a few seconds
    alice, carol = actor_for("alice"), actor_for("carol")
    first = bot.submit(alice, "backup now", ConsoleResponder(io.StringIO()))
    assert first.future is not None
    deadline = time.monotonic() + 60
    # wait until the multipart upload has started and pg_dump copies our table
    while True:
        assert time.monotonic() < deadline, "the dump never reached the table"
        with pg() as conn:
            busy = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_dump' "
                "AND query LIKE %s",
                (f"%{table}%",),
            ).fetchall()
        if busy and bucket_exists(bucket) and pending_uploads(bucket):
            break
        time.sleep(0.05)

    second = bot.submit(carol, "backup now", ConsoleResponder(io.StringIO()))
    assert second.future is not None
    refused = second.future.result(timeout=30)
    assert not refused.ok
    assert f"already running: alice (backup now), operation {first.op_id}, since " in refused.title

    with pg() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (busy[0][0],))
    result = first.future.result(timeout=60)
    assert not result.ok
    assert "pg_dump failed: it exited with code 1: pg_dump: error: " in result.title, result.title
    assert re.search("terminating connection|closed the connection", result.title), result.title
    assert "Nothing was kept: the partial file was removed, the S3 multipart upload was " in (
        result.title
    ), result.title
    folder = tmp_path / "backups"
    assert list(folder.iterdir()) == []
    assert objects(bucket) == [] and pending_uploads(bucket) == []
    rows = catalogue(bot).listing()
    assert [r.state for r in rows] == ["failed"] and rows[0].s3_key == ""


def bucket_exists(name: str) -> bool:
    try:
        s3().head_bucket(Bucket=name)
    except Exception:
        return False
    return True


def test_verify_with_a_restore_test_then_prune(backup_bot: Any, table: str, bucket: str) -> None:
    bot = backup_bot(hq_backup_keep_daily=1, hq_backup_keep_weekly=0)
    fill(table, 300)
    code, out = run_console(bot, "/hq backup now\n/hq backup now\n/hq backup now")
    assert code == 0, out
    listed = catalogue(bot).listing()
    assert len(listed) == 3 and len(set(b.file_name for b in listed)) == 3
    code, out = run_console(bot, "/hq backup verify latest --restore-test")
    assert code == 0, out
    assert f"Backup {listed[0].id} verified: checksum matches, restore test passed" in out
    assert "every table's count equals the one recorded at backup time" in out
    with pg() as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'hq_restore_test_%'"
        ).fetchone()
    assert left is not None and left[0] == 0

    code, out = run_console(bot, "/hq backup prune --dry-run")
    assert "Dry run" in out and f"delete {listed[1].id}" in out and f"delete {listed[2].id}" in out
    assert len(objects(bucket)) == 3
    code, out = run_console(bot, "/hq backup prune")
    assert code == 0 and "Pruned 2 backup(s); 1 kept" in out, out
    assert objects(bucket) == [listed[0].s3_key]
    assert [Path(b.path).exists() for b in listed] == [True, False, False]
    assert [b.state for b in catalogue(bot).listing()] == ["complete", "deleted", "deleted"]
    code, out = run_console(bot, "/hq backup list --all")
    assert "3 backup(s)" in out and out.count("deleted") >= 2, out


def test_without_s3_or_pg_restore_the_backup_is_kept_and_says_what_is_missing(
    backup_bot: Any, tmp_path: Path
) -> None:
    bot = backup_bot(hq_s3_endpoint="http://127.0.0.1:9", hq_pg_restore="/nonexistent/pg_restore")
    code, out = run_console(bot, "/hq backup now")
    assert code == 1, out
    info = catalogue(bot).listing()[0]
    assert f"Backup {info.id} written to disk, but " in out
    assert "the host's pg_restore could not be started" in out
    assert "the S3 upload could not start" in out and "S3: NOT uploaded" in out
    assert info.state == "complete" and not info.verified and info.s3_key == ""
    assert Path(info.path).is_file() and Path(info.path).stat().st_size == info.size


def test_a_lost_file_comes_back_from_its_s3_copy_and_a_bad_copy_is_not_kept(
    backup_bot: Any, table: str, bucket: str
) -> None:
    bot = backup_bot()
    fill(table, 500)
    code, out = run_console(bot, "/hq backup now")
    assert code == 0, out
    info = catalogue(bot).listing()[0]
    assert info.where == "disk + s3"
    # the bucket the backup created aborts forgotten multipart uploads by itself
    rules = s3().get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] for r in rules] == [1]

    code, out = run_console(bot, f"/hq backup verify {info.id} --s3")
    assert code == 0 and "checksum matches, full read passed, S3 copy matches" in out, out

    Path(info.path).unlink()
    code, out = run_console(bot, '/hq restore latest --reason "lost the disk"')
    assert f"The file of {info.id} ({info.path}) is missing." in out
    assert f"/hq backup fetch {info.id}" in out and "Request rq-" not in out

    # a copy that is not the backup's bytes is refused and leaves nothing in the folder
    good = s3().get_object(Bucket=bucket, Key=info.s3_key)["Body"].read()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    s3().put_object(Bucket=bucket, Key=info.s3_key, Body=bytes(bad))
    code, out = run_console(bot, f"/hq backup fetch {info.id}")
    assert "does not match the catalogue" in out and "it is corrupted" in out, out
    assert list(Path(info.path).parent.iterdir()) == []

    s3().put_object(Bucket=bucket, Key=info.s3_key, Body=good)
    code, out = run_console(bot, f"/hq backup fetch {info.id}")
    assert code == 0, out
    assert f"Backup {info.id} is back on disk from its S3 copy and verified" in out
    assert hashlib.sha256(Path(info.path).read_bytes()).hexdigest() == info.sha256
    assert (Path(info.path).stat().st_mode & 0o777) == 0o600
    code, out = run_console(bot, f"/hq backup fetch {info.id}")
    assert "is on disk" in out and "nothing to fetch" in out
