"""Backup and restore plans (exact argv, `latest` resolved at plan time, notes outside the
digest), the catalogue, the lock, atomic files and the upload pipe."""

from __future__ import annotations

import base64
import datetime as dt
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from approvals.db import make_engine, upgrade
from approvals.models import BackupLock, BackupState
from commands import backup_ops as ops
from commands import backups
from commands.infra.backup_store import (
    ADVISORY_KEY,
    AtomicFile,
    BackupInfo,
    Catalogue,
    DatabaseLock,
    GrowingFile,
    LockBusy,
    StreamUpload,
    UploadAborted,
    advisory_key,
    leftovers,
)
from commands.parser import parse
from commands.registry import REGISTRY
from commands.spec import Actor, UserError

KEY = base64.b64encode(bytes(range(32))).decode()


@dataclass
class Gov:
    engine: Any


@dataclass
class Ctx:
    settings: Any
    governance: Gov
    actor: Actor = field(default_factory=lambda: Actor("U0ALICE", "alice"))
    operation_id: str = "op-test"
    infra: Any = None
    registry: Any = field(default_factory=lambda: REGISTRY)


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    eng = make_engine(f"sqlite:///{tmp_path}/bot.db")
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def ctx(make_settings: Any, engine: Any, tmp_path: Path) -> Ctx:
    settings = make_settings(
        hq_backup_dir=str(tmp_path / "backups"),
        hq_compose_project="harmoniq",
        hq_compose_file="/opt/harmoniq/docker-compose.yml",
        hq_postgres_host="127.0.0.1",
        hq_postgres_port=5432,
    )
    return Ctx(settings=settings, governance=Gov(engine))


def add_backup(
    ctx: Ctx,
    backup_id: str,
    started: dt.datetime,
    *,
    kind: str = "manual",
    encrypted: bool = False,
    verified: bool = True,
    state: str = BackupState.COMPLETE,
    content: bytes = b"PGDMP archive",
) -> BackupInfo:
    folder = Path(ctx.settings.hq_backup_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{backup_id}.dump"
    path.write_bytes(content)
    cat = Catalogue(ctx.governance.engine)
    info = BackupInfo(
        id=backup_id,
        kind=kind,
        state=BackupState.RUNNING,
        file_name=path.name,
        path=str(path),
        size=0,
        sha256="",
        encrypted=encrypted,
        s3_bucket="harmoniq-backups",
        s3_key=f"db/{path.name}",
        started_at=started,
        finished_at=None,
        duration_s=0,
        table_counts={},
        verified=False,
        verified_at=None,
    )
    cat.start(info)
    if state == BackupState.COMPLETE:
        import hashlib

        cat.complete(
            backup_id,
            size=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            finished_at=started + dt.timedelta(seconds=3),
            duration_s=3.0,
            table_counts={"public.users": 10, "public.messages": 1000},
            verified=verified,
            s3_key=f"db/{path.name}",
        )
    elif state == BackupState.FAILED:
        cat.fail(backup_id, "pg_dump failed")
    found = cat.get(backup_id)
    assert found is not None
    return found


T0 = dt.datetime(2025, 1, 15, 2, 0, tzinfo=dt.UTC)


# --- argv ----------------------------------------------------------------------------------------
def test_pg_dump_argv_runs_the_guides_dump_at_the_exported_snapshot() -> None:
    assert ops.DUMP_ARGV == (
        "pg_dump",
        "--format=custom",
        "--no-password",
        "-U",
        "$DB_USER",
        "-d",
        "$DB_NAME",
        "--snapshot=$SNAPSHOT",
    )
    filled = ops.fill(ops.DUMP_ARGV, {"DB_USER": "harmoniq", "DB_NAME": "hq", "SNAPSHOT": "3-1"})
    assert filled[-3:] == ("-d", "hq", "--snapshot=3-1") and filled[4] == "harmoniq"


def test_restore_argv_in_one_transaction_by_default(ctx: Ctx) -> None:
    argv = ops.restore_argv(ctx.settings, path="/b/db.dump", jobs=1)
    assert argv == (
        "pg_restore",
        "--clean",
        "--if-exists",
        "--no-owner",
        "--exit-on-error",
        "--single-transaction",
        "--host",
        "127.0.0.1",
        "--port",
        "5432",
        "--username",
        "$DB_USER",
        "--no-password",
        "--dbname",
        "$DB_NAME",
        "/b/db.dump",
    )


def test_restore_argv_with_jobs_needs_a_file_and_drops_the_single_transaction(ctx: Ctx) -> None:
    argv = ops.restore_argv(ctx.settings, path="/b/db.dump", jobs=4)
    assert "--jobs=4" in argv and "--single-transaction" not in argv
    assert ops.restore_argv(ctx.settings, path=None, jobs=1)[-1] == "$DB_NAME"  # stdin
    with pytest.raises(ValueError):
        ops.restore_argv(ctx.settings, path=None, jobs=2)


def test_scratch_and_verify_argv(ctx: Ctx) -> None:
    assert ops.verify_argv(ctx.settings) == ("pg_restore", "--file=/dev/null")
    argv = ops.scratch_argv(ctx.settings, path=None, database="hq_restore_test_ab12cd34")
    assert argv[:4] == ("pg_restore", "--no-owner", "--exit-on-error", "--single-transaction")
    assert argv[-2:] == ("--dbname", "hq_restore_test_ab12cd34")


def test_file_names_follow_the_guide_and_never_collide() -> None:
    assert ops.file_name(T0, False) == "db_20250115_020000.dump"
    assert ops.file_name(T0, True) == "db_20250115_020000.dump.enc"
    assert ops.file_name(T0, False, 2) == "db_20250115_020000_2.dump"
    assert ops.BACKUP_ID.match(ops.new_backup_id(T0))
    assert ops.new_backup_id(T0).startswith("b-20250115-020000-")


def test_part_size_grows_only_for_databases_too_big_for_the_parts() -> None:
    mib = 1024 * 1024
    assert ops.part_size(5, 0) == 5 * mib
    assert ops.part_size(5, 40 * 1024 * mib) == 5 * mib
    assert ops.part_size(5, 90 * 1024 * mib) == 11 * mib
    assert ops.part_size(16, 1024 * mib) == 16 * mib


def test_pg_error_keeps_the_error_lines() -> None:
    stderr = (
        b"pg_dump: warning: something\n"
        b'pg_dump: error: Dumping the contents of table "t" failed: PQgetResult() failed.\n'
        b"pg_dump: detail: Error message from server: FATAL:  terminating connection\n"
        b"pg_dump: detail: Command was: COPY public.t (id) TO stdout;\n"
    )
    text = ops.pg_error(stderr)
    assert text.startswith('pg_dump: error: Dumping the contents of table "t" failed')
    assert "FATAL: terminating connection" in text and "COPY" not in text
    assert ops.pg_error(b"just a tail") == "just a tail"


def test_compare_counts_names_every_difference() -> None:
    expected = {"public.a": 1, "public.b": 2, "public.c": 3}
    assert ops.compare_counts(expected, dict(expected)) == []
    assert ops.compare_counts(expected, {"public.a": 1, "public.b": 5, "public.d": 0}) == [
        "public.b: 5 rows, expected 2",
        "public.c: missing after the restore (had 3 rows)",
        "public.d: not in the recorded counts (0 rows)",
    ]


def test_the_backup_key_is_validated_and_registered_for_redaction(make_settings: Any) -> None:
    from commands.redact import default_redactor

    settings = make_settings(hq_backup_key=KEY)
    assert ops.backup_key(settings) == bytes(range(32))
    assert KEY not in default_redactor()(f"key={KEY}")
    assert ops.backup_key(make_settings()) is None


def test_backup_ids_are_parsed_strictly() -> None:
    assert backups.backup_ref("LATEST") == "latest"
    assert backups.backup_ref("b-20250115-020000-1a2b") == "b-20250115-020000-1a2b"
    for bad in ("b-2025", "../etc/passwd", "b-20250115-020000-zzzz"):
        with pytest.raises(ValueError):
            backups.backup_ref(bad)


# --- plans ---------------------------------------------------------------------------------------
def test_backup_plan_lists_every_step_and_the_dump_argv(ctx: Ctx) -> None:
    plan = backups.plan_backup({}, ctx)
    titles = [s.title for s in plan.steps]
    assert plan.steps[2].argv == ops.DUMP_ARGV
    assert any(t.startswith("upload to s3://harmoniq-backups/db/") for t in titles)
    assert plan.steps[-2].argv == ("pg_restore", "--file=/dev/null")
    assert not any("encrypt" in t for t in titles)
    assert plan.data == {"kind": "manual"}


def test_backup_plan_with_a_key_and_without_a_bucket(make_settings: Any, engine: Any) -> None:
    settings = make_settings(hq_backup_key=KEY, hq_backup_bucket="none")
    ctx = Ctx(
        settings=settings, governance=Gov(engine), actor=Actor("scheduler", source="scheduler")
    )
    plan = backups.plan_backup({}, ctx)
    titles = [s.title for s in plan.steps]
    assert any("AES-256-GCM" in t for t in titles)
    assert not any("s3://" in t for t in titles)
    assert plan.data == {"kind": "scheduled"}


def test_restore_latest_names_the_newest_manual_or_scheduled_backup(ctx: Ctx) -> None:
    add_backup(ctx, "b-20250114-020000-aaaa", T0 - dt.timedelta(days=1), kind="scheduled")
    add_backup(ctx, "b-20250115-020000-bbbb", T0, kind="scheduled")
    add_backup(ctx, "b-20250115-030000-cccc", T0 + dt.timedelta(hours=1), kind="safety")
    add_backup(ctx, "b-20250115-040000-dddd", T0 + dt.timedelta(hours=2), state=BackupState.FAILED)
    plan = backups.plan_restore({"backup": "latest"}, ctx)
    assert plan.data["backup"] == "b-20250115-020000-bbbb"
    assert "b-20250115-020000-bbbb" in plan.summary and "sha256 " in plan.summary
    assert plan.targets == ("b-20250115-020000-bbbb", "postgres", "backend")
    compose = ("docker", "compose", "-p", "harmoniq", "-f", "/opt/harmoniq/docker-compose.yml")
    assert plan.steps[3].argv == (*compose, "stop", "backend")
    assert plan.steps[4].argv == ops.restore_argv(ctx.settings, path=plan.data["path"], jobs=1)
    assert plan.steps[5].argv == (*compose, "start", "backend")
    assert "was taken" in plan.notes[0] and "verified" in plan.notes[0]


def test_a_newer_backup_changes_the_plan_of_restore_latest(ctx: Ctx) -> None:
    add_backup(ctx, "b-20250115-020000-bbbb", T0)
    before = backups.plan_restore({"backup": "latest"}, ctx)
    again = backups.plan_restore({"backup": "latest"}, ctx)
    assert before.digest() == again.digest()
    add_backup(ctx, "b-20250116-020000-eeee", T0 + dt.timedelta(days=1))
    after = backups.plan_restore({"backup": "latest"}, ctx)
    assert after.data["backup"] == "b-20250116-020000-eeee"
    assert after.digest() != before.digest()


def test_the_age_note_is_not_part_of_the_digest(ctx: Ctx) -> None:
    add_backup(ctx, "b-20250115-020000-bbbb", T0)
    plan = backups.plan_restore({"backup": "b-20250115-020000-bbbb"}, ctx)
    aged = type(plan)(**{**plan.__dict__, "notes": ("taken 3 years ago",)})
    assert aged.digest() == plan.digest()


def test_an_encrypted_backup_is_restored_from_stdin_in_one_transaction(
    make_settings: Any, engine: Any, tmp_path: Path
) -> None:
    settings = make_settings(hq_backup_dir=str(tmp_path / "b"), hq_restore_jobs=4)
    ctx = Ctx(settings=settings, governance=Gov(engine))
    add_backup(ctx, "b-20250115-020000-bbbb", T0, encrypted=True)
    add_backup(ctx, "b-20250114-020000-aaaa", T0 - dt.timedelta(days=1))
    enc = backups.plan_restore({"backup": "b-20250115-020000-bbbb"}, ctx)
    assert enc.data["jobs"] == 1 and enc.steps[4].argv[-1] == "$DB_NAME"
    assert "decrypted on the fly" in enc.steps[4].title
    plain = backups.plan_restore({"backup": "b-20250114-020000-aaaa"}, ctx)
    assert plain.data["jobs"] == 4 and "--jobs=4" in plain.steps[4].argv
    assert "partly restored" in plain.steps[4].title


def test_restore_refuses_a_missing_file_a_failed_backup_or_nothing(ctx: Ctx) -> None:
    with pytest.raises(UserError, match="no complete manual or scheduled backup"):
        backups.plan_restore({"backup": "latest"}, ctx)
    info = add_backup(ctx, "b-20250115-020000-bbbb", T0)
    Path(info.path).unlink()
    with pytest.raises(UserError, match="is missing"):
        backups.plan_restore({"backup": "latest"}, ctx)
    add_backup(ctx, "b-20250115-050000-ffff", T0, state=BackupState.FAILED)
    with pytest.raises(UserError, match="is failed"):
        backups.plan_restore({"backup": "b-20250115-050000-ffff"}, ctx)
    with pytest.raises(UserError, match="No backup b-20250101-000000-0000"):
        backups.plan_restore({"backup": "b-20250101-000000-0000"}, ctx)


def test_restore_is_destructive_and_needs_a_reason() -> None:
    parsed = parse("restore latest --reason 'bad migration'", REGISTRY)
    assert parsed.spec.destructive and parsed.args == {"backup": "latest"}
    assert parsed.reason == "bad migration"
    assert REGISTRY["restore"].usage == '/hq restore ID|latest --reason "..." [--dry-run]'
    assert not REGISTRY["backup now"].destructive


def test_prune_plan_lists_what_retention_would_delete(
    make_settings: Any, engine: Any, tmp_path: Path
) -> None:
    settings = make_settings(
        hq_backup_dir=str(tmp_path / "b"), hq_backup_keep_daily=2, hq_backup_keep_weekly=0
    )
    ctx = Ctx(settings=settings, governance=Gov(engine))
    for day in range(1, 5):
        add_backup(ctx, f"b-2025011{day}-020000-000{day}", T0.replace(day=10 + day), verified=False)
    plan = backups.plan_prune({}, ctx)
    assert plan.data == {"delete": ["b-20250112-020000-0002", "b-20250111-020000-0001"]}
    assert plan.steps[1].title.startswith("delete b-20250112-020000-0002 (")
    assert "delete 2, keep 2" in plan.summary
    assert plan.notes == (
        "keep b-20250114-020000-0004: daily 2025-01-14",
        "keep b-20250113-020000-0003: daily 2025-01-13",
    )


def test_restore_state_sentences_say_where_things_stand() -> None:
    state = backups.RestoreState(backup="b-1")
    assert state.sentence() == "The database was not changed. The backend is running."
    state.safety, state.backend, state.database = "b-2", "stopped", "restoring"
    text = state.sentence()
    assert "one transaction" in text and "STOPPED" in text and "/hq restore b-2" in text
    state.single_transaction = False
    assert "PARTLY restored from b-1" in state.sentence()
    state.backend, state.database = "unknown", "restored"
    assert "holds the data of b-1" in state.sentence() and "/hq ps" in state.sentence()


# --- catalogue, lock, files, pipe ----------------------------------------------------------------
def test_the_catalogue_records_a_backup_from_start_to_deletion(ctx: Ctx) -> None:
    info = add_backup(ctx, "b-20250115-020000-bbbb", T0)
    assert info.state == "complete" and info.verified and info.verified_at is not None
    assert info.table_counts == {"public.users": 10, "public.messages": 1000}
    assert info.started_at == T0 and info.where == "disk + s3"
    cat = Catalogue(ctx.governance.engine)
    cat.mark_deleted(info.id, T0)
    gone = cat.get(info.id)
    assert gone is not None and gone.state == "deleted" and gone.s3_key == ""
    assert cat.latest(("manual",)) is None


def test_the_lock_names_its_holder_and_is_released(engine: Any) -> None:
    lock = DatabaseLock(engine)
    lease = lock.acquire("alice (backup now)", "op-1")
    with pytest.raises(LockBusy) as info:
        DatabaseLock(engine).acquire("bob (restore)", "op-2")
    assert "already running: alice (backup now), operation op-1, since " in info.value.message
    assert " UTC (" in info.value.message
    lease.release()
    DatabaseLock(engine).acquire("bob (restore)", "op-2").release()


def test_locks_of_other_names_do_not_block_each_other(engine: Any) -> None:
    backup = DatabaseLock(engine).acquire("alice (backup now)", "op-1")
    change = DatabaseLock(engine, name="deployment", work="A change").acquire(
        "bob (rotate)", "op-2"
    )
    with pytest.raises(LockBusy) as info:
        DatabaseLock(engine, name="deployment", work="A change").acquire("carol (upgrade)", "op-3")
    assert info.value.message.startswith("A change is already running: bob (rotate), operation")
    assert advisory_key("deployment") != advisory_key("database") == ADVISORY_KEY
    assert 0 < advisory_key("deployment") < 2**63
    change.release()
    backup.release()


def test_only_one_thread_gets_the_lock(engine: Any) -> None:
    lock = DatabaseLock(engine)
    won: list[str] = []
    lost: list[str] = []
    barrier = threading.Barrier(6)

    def race(name: str) -> None:
        barrier.wait()
        try:
            lock.acquire(name, name)
            won.append(name)
        except LockBusy:
            lost.append(name)

    threads = [threading.Thread(target=race, args=(f"t{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == 5


def test_a_stale_lock_is_taken_over(engine: Any) -> None:
    lock = DatabaseLock(engine, stale_after=60)
    lease = lock.acquire("dead (backup now)", "op-dead")
    lease._stop.set()  # the holder died: no more heartbeats, no release
    with engine.begin() as conn:
        old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        conn.execute(update(BackupLock).values(heartbeat_at=old))
    fresh = lock.acquire("alice (backup now)", "op-new")
    assert fresh.took_over is not None and fresh.took_over.op_id == "op-dead"
    holder = lock.holder()
    assert holder is not None and holder.op_id == "op-new"
    fresh.release()


def test_the_lock_on_postgresql_is_an_advisory_lock_that_dies_with_its_session(
    pg_url: str,
) -> None:
    one, two = make_engine(pg_url), make_engine(pg_url)
    upgrade(one)
    try:
        lease = DatabaseLock(one).acquire("alice (backup now)", "op-1")
        with pytest.raises(LockBusy, match="alice \\(backup now\\)"):
            DatabaseLock(two).acquire("bob (backup now)", "op-2")
        lease._stop.set()
        lease._connection.close()  # the process died: its session, and the lock, are gone
        taken = DatabaseLock(two).acquire("bob (backup now)", "op-2")
        assert taken.took_over is not None and taken.took_over.op_id == "op-1"
        taken.release()
        DatabaseLock(one).acquire("carol", "op-3").release()
    finally:
        one.dispose()
        two.dispose()


def test_an_atomic_file_appears_only_when_committed(tmp_path: Path) -> None:
    target = tmp_path / "db_1.dump"
    file = AtomicFile(target)
    file.write(b"hello ")
    file.write(memoryview(b"world"))
    assert not target.exists() and file.tmp.exists()
    assert leftovers(tmp_path) == [file.tmp]  # so only the lock holder may remove leftovers
    file.commit()
    assert target.read_bytes() == b"hello world" and not file.tmp.exists()
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    with AtomicFile(tmp_path / "db_2.dump") as aborted:
        aborted.write(b"partial")
        assert aborted.tmp.name.startswith(".db_2.dump.partial-")
        aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db_1.dump"]
    clash = AtomicFile(target)
    clash.write(b"other")
    with pytest.raises(FileExistsError):
        clash.commit()
    assert target.read_bytes() == b"hello world"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db_1.dump"]


def test_leftovers_finds_partial_files_of_dead_backups(tmp_path: Path) -> None:
    (tmp_path / ".db_20250115_020000.dump.partial-1a2b3c4d").write_bytes(b"x")
    (tmp_path / "db_20250115_020000.dump").write_bytes(b"x")
    assert [p.name for p in leftovers(tmp_path)] == [".db_20250115_020000.dump.partial-1a2b3c4d"]


def test_a_follower_reads_exactly_what_was_asked_as_the_file_grows(tmp_path: Path) -> None:
    grow = GrowingFile(tmp_path / "db_1.dump")
    reader = grow.follower()
    for piece in (b"abc", b"defg", b"h"):
        grow.write(piece)
    assert reader.read(5) == b"abcde"
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.append(reader.read(10)))
    thread.start()
    time.sleep(0.1)
    assert got == []  # waits for ten bytes, or the end
    grow.finish()
    thread.join(2)
    assert got == [b"fgh"] and reader.read(10) == b""
    reader.close()


def test_a_failed_writer_makes_every_follower_raise(tmp_path: Path) -> None:
    grow = GrowingFile(tmp_path / "db_1.dump")
    first, second = grow.follower(), grow.follower()
    grow.write(b"0123456789")
    assert first.read(4) == b"0123"
    grow.fail("pg_dump failed")
    with pytest.raises(UploadAborted, match="pg_dump failed"):
        first.read(4)
    with pytest.raises(UploadAborted):
        second.read(-1)


def test_a_follower_waits_for_a_whole_part_across_many_writes(tmp_path: Path) -> None:
    grow = GrowingFile(tmp_path / "db_1.dump")
    reader = grow.follower()
    data = os.urandom(100_000)

    def writer() -> None:
        for start in range(0, len(data), 1000):
            grow.write(data[start : start + 1000])
            time.sleep(0.0005)
        grow.file.commit()
        grow.finish()

    thread = threading.Thread(target=writer)
    thread.start()
    first = reader.read(60_000)
    rest = reader.read(60_000)
    thread.join()
    assert len(first) == 60_000 and first + rest == data
    assert (tmp_path / "db_1.dump").read_bytes() == data


class FakeMinio:
    """put_object as minio does it for an unknown length: read part + 1 bytes at a time, a
    single PUT when it all fits, else a multipart upload that is aborted on any exception."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.stored: dict[str, bytes] = {}

    def put_object(self, bucket: str, key: str, data: Any, length: int, **kw: Any) -> Any:
        part, parts, upload = kw["part_size"], [], False
        try:
            while True:
                block = data.read(part + 1)
                if len(block) <= part:
                    parts.append(block)
                    break
                parts.append(block[:part])
                if not upload:
                    upload = True
                    self.calls.append("create")
                self.calls.append("part")
                leftover = block[part:]
                data = _Prefixed(leftover, data)
            self.stored[key] = b"".join(parts)
            self.calls.append("complete" if upload else "put")
        except Exception:
            if upload:
                self.calls.append("abort")
            raise
        return type("Result", (), {"etag": "e"})()


class _Prefixed:
    def __init__(self, head: bytes, rest: Any) -> None:
        self.head, self.rest = head, rest

    def read(self, size: int) -> bytes:
        out, self.head = self.head, b""
        return out + self.rest.read(size - len(out))


def test_an_upload_completes_only_after_the_writer_finishes(tmp_path: Path) -> None:
    grow = GrowingFile(tmp_path / "db_1.dump")
    client = FakeMinio()
    upload = StreamUpload(client, "b", "db/x", 10, grow.follower()).start()
    grow.write(b"a" * 25)
    time.sleep(0.1)
    assert "complete" not in client.calls
    grow.finish()
    upload.wait(5)
    assert client.calls == ["create", "part", "part", "complete"]
    assert client.stored["db/x"] == b"a" * 25


def test_an_upload_is_aborted_when_the_writer_fails(tmp_path: Path) -> None:
    grow = GrowingFile(tmp_path / "db_1.dump")
    client = FakeMinio()
    upload = StreamUpload(client, "b", "db/x", 10, grow.follower()).start()
    grow.write(b"a" * 25)
    time.sleep(0.1)
    grow.fail("pg_dump exited with code 1")
    with pytest.raises(UploadAborted):
        upload.wait(5)
    assert client.calls[-1] == "abort" and client.stored == {}


def test_fetch_and_verify_s3_are_refused_where_they_make_no_sense(ctx: Ctx) -> None:
    info = add_backup(ctx, "b-20250115-020000-cccc", T0)
    with pytest.raises(UserError, match=r"is on disk .* nothing to fetch"):
        backups.plan_fetch({"id": info.id}, ctx)
    Path(info.path).unlink()
    plan = backups.plan_fetch({"id": info.id}, ctx)
    assert f"from s3://harmoniq-backups/db/{info.file_name}" in plan.summary
    assert plan.data == {"id": info.id, "sha256": info.sha256}
    with pytest.raises(UserError) as missing:
        backups.plan_restore({"backup": info.id}, ctx)
    assert missing.value.message == (
        f"The file of {info.id} ({info.path}) is missing. Its S3 copy "
        f"s3://harmoniq-backups/db/{info.file_name} can bring it back: "
        f"`/hq backup fetch {info.id}`."
    )
    Catalogue(ctx.governance.engine).clear_s3(info.id)
    with pytest.raises(UserError, match="has no S3 copy to fetch from"):
        backups.plan_fetch({"id": info.id}, ctx)
    with pytest.raises(UserError, match=f"The file of {info.id} .* is missing.$"):
        backups.plan_restore({"backup": info.id}, ctx)
    plan = backups.plan_verify({"id": info.id, "s3": True}, ctx)
    with pytest.raises(UserError, match=r"has no S3 copy .* leave out --s3"):
        backups.execute_verify(plan, ctx, lambda _line: None)


def test_a_lock_whose_database_does_not_answer_refuses_and_release_never_raises(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = make_engine(f"sqlite:///{tmp_path}/no-such-folder/bot.db")
    with pytest.raises(UserError) as info:
        DatabaseLock(gone).acquire("alice (backup now)", "op-1")
    assert info.value.message == (
        "hq-bot's database did not answer while taking the database lock (OperationalError); "
        "nothing was done."
    )
    lock = DatabaseLock(engine)
    lease = lock.acquire("alice (backup now)", "op-1")

    def broken(owner: str) -> None:
        raise OSError("the disk is gone")

    monkeypatch.setattr(lock, "forget", broken)
    lease.release()  # logged, not raised: the work done under the lock keeps its result
    assert lock.holder() is not None  # the row stays, and goes stale by itself
