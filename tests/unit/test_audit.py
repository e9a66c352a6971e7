from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

import approvals.audit as audit
from approvals.audit import AuditError, AuditTrail, canonical, load_key, sign
from approvals.db import alembic_config, make_engine, upgrade
from approvals.models import Base
from bot.settings import SettingsError
from commands.redact import MASK, Redactor

KEY = bytes.fromhex("5a" * 16 + "c3" * 16)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, make_settings: Any) -> str:
    if request.param == "sqlite":
        return str(make_settings().hq_database_url)
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def trail(engine: Engine) -> AuditTrail:
    return AuditTrail(engine, KEY, Redactor())


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "BATCH", 3)  # cross batch boundaries with few rows


def _fill(trail: AuditTrail, n: int) -> None:
    for i in range(n):
        trail.append(
            "step",
            actor=f"U{i % 3}",
            op_id=f"op-{i}",
            command="restart",
            data={"i": i, "note": "héllo ✓"},
        )


def _tamper(engine: Engine, *statements: str) -> None:
    """Run SQL as an attacker with database access: switch the append-only triggers off first."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE audit_events DISABLE TRIGGER USER")
        else:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_events_no_update")
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_events_no_delete")
        for statement in statements:
            conn.exec_driver_sql(statement)


def _seqs(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT seq FROM audit_events ORDER BY seq")]


# --- canonical form and signing ------------------------------------------------------------------


def test_canonical_is_sorted_compact_utf8_with_utc_microseconds() -> None:
    when = dt.datetime(2024, 5, 1, 14, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    out = canonical({"b": 1, "a": ["ü", when], "c": {"z": None, "y": True}})
    assert out == '{"a":["ü","2024-05-01T12:00:00.000000Z"],"b":1,"c":{"y":true,"z":null}}'.encode()
    with pytest.raises(ValueError):
        canonical({"x": float("nan")})


# --- the chain ---------------------------------------------------------------------------------


def test_untouched_trail_verifies(trail: AuditTrail, small_batches: None) -> None:
    assert trail.verify().ok and trail.verify().checked == 0
    _fill(trail, 10)
    result = trail.verify()
    assert result.ok and result.checked == 10 and result.first_bad_seq is None


def test_rows_are_linked_and_signed(trail: AuditTrail) -> None:
    _fill(trail, 3)
    rows = sorted(trail.recent(), key=lambda r: r.seq)
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == "0" * 64
    assert rows[1].prev_hash == rows[0].hash and rows[2].prev_hash == rows[1].hash
    assert all(sign(KEY, r.fields()) == r.hash for r in rows)
    assert all(r.at.utcoffset() == dt.timedelta(0) for r in rows)


def test_changed_row_is_named(trail: AuditTrail, engine: Engine, small_batches: None) -> None:
    _fill(trail, 8)
    _tamper(engine, """UPDATE audit_events SET data = '{"i":99,"note":"x"}' WHERE seq = 5""")
    result = trail.verify()
    assert not result.ok and result.first_bad_seq == 5 and result.checked == 4
    assert result.reason == "row 5 was changed"


def test_reformatted_data_counts_as_changed(trail: AuditTrail, engine: Engine) -> None:
    _fill(trail, 3)
    _tamper(engine, "UPDATE audit_events SET data = ' ' || data WHERE seq = 2")
    result = trail.verify()
    assert not result.ok and result.first_bad_seq == 2


def test_changed_actor_or_time_is_named(trail: AuditTrail, engine: Engine) -> None:
    _fill(trail, 4)
    _tamper(engine, "UPDATE audit_events SET actor = 'UATTACKER' WHERE seq = 3")
    assert trail.verify().first_bad_seq == 3


def test_garbage_timestamp_is_a_changed_row(make_settings: Any) -> None:
    eng = make_engine(make_settings().hq_database_url)
    upgrade(eng)
    trail = AuditTrail(eng, KEY, Redactor())
    _fill(trail, 3)
    _tamper(eng, "UPDATE audit_events SET at = 'yesterday' WHERE seq = 2")
    result = trail.verify()
    assert not result.ok and result.first_bad_seq == 2 and "changed" in result.reason


def test_deleted_middle_row_is_named(
    trail: AuditTrail, engine: Engine, small_batches: None
) -> None:
    _fill(trail, 8)
    _tamper(engine, "DELETE FROM audit_events WHERE seq = 4")
    result = trail.verify()
    assert not result.ok and result.first_bad_seq == 4
    assert result.reason == "row 4 is missing"


def test_deleted_row_with_renumbering_is_named(trail: AuditTrail, engine: Engine) -> None:
    _fill(trail, 6)
    _tamper(
        engine,
        "DELETE FROM audit_events WHERE seq = 3",
        "UPDATE audit_events SET seq = -seq WHERE seq > 3",
        "UPDATE audit_events SET seq = -seq - 1 WHERE seq < 0",
    )
    assert _seqs(engine) == [1, 2, 3, 4, 5]
    result = trail.verify()
    assert not result.ok and result.first_bad_seq == 3


def test_swapped_rows_name_the_first(trail: AuditTrail, engine: Engine) -> None:
    _fill(trail, 7)
    _tamper(
        engine,
        "UPDATE audit_events SET seq = -1 WHERE seq = 3",
        "UPDATE audit_events SET seq = 3 WHERE seq = 6",
        "UPDATE audit_events SET seq = 6 WHERE seq = -1",
    )
    result = trail.verify()
    assert not result.ok and result.first_bad_seq == 3


def test_forged_rows_are_caught(trail: AuditTrail, engine: Engine) -> None:
    _fill(trail, 5)
    last = trail.recent(1)[0]
    forged = {**last.fields(), "seq": 6, "prev_hash": last.hash, "data": '{"ok":true}'}
    forged_hash = sign(b"not-the-key", forged)  # well formed, but signed without the key
    columns = ", ".join([*forged, "hash"])
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO audit_events ({columns}) VALUES (:seq, :at, :kind, :actor, :op_id, "
                ":request_id, :command, :data, :prev_hash, :hash)"
            ),
            {**forged, "hash": forged_hash},
        )
    result = trail.verify()
    assert not result.ok and result.first_bad_seq == 6 and result.checked == 5
    # A row slipped in before the first one is caught too.
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO audit_events ({columns}) VALUES (:seq, :at, :kind, :actor, :op_id, "
                ":request_id, :command, :data, :prev_hash, :hash)"
            ),
            {**forged, "seq": 0, "prev_hash": "0" * 64, "hash": forged_hash},
        )
    assert trail.verify().first_bad_seq == 0


def test_far_seq_leaves_a_gap(trail: AuditTrail, engine: Engine) -> None:
    _fill(trail, 2)
    row = trail.recent(1)[0]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_events (seq, at, kind, actor, op_id, request_id, command, "
                "data, prev_hash, hash) VALUES (10, :at, 'step', '', '', '', '', '{}', :p, :p)"
            ),
            {"at": row.at, "p": row.hash},
        )
    result = trail.verify()
    assert not result.ok and result.first_bad_seq == 3 and result.reason == "row 3 is missing"


def test_wrong_key_fails_at_row_one(trail: AuditTrail, engine: Engine) -> None:
    _fill(trail, 2)
    assert AuditTrail(engine, b"another key", Redactor()).verify().first_bad_seq == 1


# --- the database refuses edits ------------------------------------------------------------------


def test_updates_and_deletes_are_refused(trail: AuditTrail, engine: Engine) -> None:
    _fill(trail, 3)
    statements = [
        "UPDATE audit_events SET actor = 'x' WHERE seq = 2",
        "DELETE FROM audit_events WHERE seq = 3",
        "DELETE FROM audit_events",
    ]
    if engine.dialect.name == "postgresql":
        statements.append("TRUNCATE audit_events")
    for statement in statements:
        with pytest.raises(Exception, match="audit_events is append-only"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
    assert _seqs(engine) == [1, 2, 3] and trail.verify().ok


def test_migration_matches_model_and_downgrades(engine: Engine) -> None:
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if "audit_events" in repr(d)] == []
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    assert "audit_events" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            assert (
                conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_proc WHERE proname = 'audit_events_append_only'"
                ).scalar()
                == 0
            )
        else:
            assert (
                conn.exec_driver_sql(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
                ).scalar()
                == 0
            )
    upgrade(engine)
    trail = AuditTrail(engine, KEY, Redactor())
    trail.append("system")
    assert trail.verify().ok


# --- redaction ---------------------------------------------------------------------------------


def test_secrets_are_stored_redacted(trail: AuditTrail, engine: Engine) -> None:
    redactor = Redactor(["Sup3r-Secret-Value"])
    secret_trail = AuditTrail(engine, KEY, redactor)
    token = "xoxb-" + "1234567890-abcdefghij"
    secret_trail.append(
        "command.received",
        actor="U1",
        command="restart",
        data={
            "text": "restart --password hunter22",
            "nested": [{"env": "DB_PASSWORD=pw123456"}, ("Sup3r-Secret-Value", 5)],
            f"{token}": "key names are redacted too",
            "fp": "sha256:0123456789ab",
        },
        op_id="op-1 Sup3r-Secret-Value",
    )
    with engine.connect() as conn:
        stored = " ".join(str(v) for v in conn.exec_driver_sql("SELECT * FROM audit_events").one())
    for secret in ("hunter22", "pw123456", "Sup3r-Secret-Value", token, KEY.hex()):
        assert secret not in stored
    assert MASK in stored and "sha256:0123456789ab" in stored
    assert trail.verify().ok
    # The trail's key itself is masked wherever it would show up.
    assert KEY.hex() not in redactor(f"key={KEY.hex()} {KEY.hex()}")


# --- concurrency -------------------------------------------------------------------------------


def test_threads_extend_one_chain(trail: AuditTrail, engine: Engine) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(25):
                trail.append("step", actor=f"T{n}", data={"i": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _seqs(engine) == list(range(1, 201))
    result = trail.verify()
    assert result.ok and result.checked == 200


CHILD = """
import sys, time
from approvals.audit import AuditTrail
from approvals.db import make_engine
from commands.redact import Redactor
url, key, n, name, start = sys.argv[1:6]
trail = AuditTrail(make_engine(url), bytes.fromhex(key), Redactor())
while time.time() < float(start):
    time.sleep(0.001)
for i in range(int(n)):
    trail.append("step", actor=name, data={"i": i})
"""


def test_processes_extend_one_chain(trail: AuditTrail, engine: Engine, db_url: str) -> None:
    trail.append("system", actor="system")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = str(time.time() + 3)  # both children are ready (imports done) before they write
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, db_url, KEY.hex(), "60", f"P{n}", start],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    for i in range(20):  # and this process writes at the same time
        trail.append("step", actor="P-main", data={"i": i})
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    assert _seqs(engine) == list(range(1, 142))
    result = trail.verify()
    assert result.ok and result.checked == 141
    actors = {r.actor for r in trail.recent(200)}
    assert {"P0", "P1", "P-main"} <= actors


def test_pooled_connections_keep_their_isolation(make_settings: Any) -> None:
    """The SQLite writer switches pysqlite's implicit BEGIN off for its own checkout only."""
    eng = make_engine(make_settings().hq_database_url, pool_size=1, max_overflow=0)
    upgrade(eng)
    AuditTrail(eng, KEY, Redactor()).append("system")
    with eng.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch (x INTEGER)")
        conn.commit()
        conn.exec_driver_sql("INSERT INTO scratch VALUES (1)")
        conn.rollback()
        assert conn.exec_driver_sql("SELECT count(*) FROM scratch").scalar() == 0


# --- failures ------------------------------------------------------------------------------------


def test_unreachable_postgresql_raises_audit_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    eng = make_engine(f"postgresql://hq:Hunter2-Password@127.0.0.1:{port}/hq")
    trail = AuditTrail(eng, KEY, Redactor())
    with pytest.raises(AuditError) as info:
        trail.append("command.received", actor="U1", data={"x": 1})
    message = str(info.value)
    assert "OperationalError" in message
    assert "Hunter2-Password" not in message and "127.0.0.1" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(AuditError):
        trail.verify()


def test_unwritable_sqlite_raises_audit_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    eng = create_engine(f"sqlite:///{blocker}/hq.db")
    with pytest.raises(AuditError, match="OperationalError"):
        AuditTrail(eng, KEY, Redactor()).append("step")


def test_unmigrated_database_raises_audit_error(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(AuditError):
        AuditTrail(eng, KEY, Redactor()).append("step")


def test_bad_events_raise_audit_error(trail: AuditTrail) -> None:
    with pytest.raises(AuditError, match="TypeError"):
        trail.append("step", data={"raw": b"bytes"})
    with pytest.raises(AuditError):
        trail.append("")
    assert trail.verify().checked == 0


def test_long_fields_are_truncated_not_refused(trail: AuditTrail) -> None:
    trail.append("command.rejected", actor="U1", command="x" * 500)
    assert len(trail.recent(1)[0].command) == 128 and trail.verify().ok


# --- reading and export ------------------------------------------------------------------------


def test_recent_is_newest_first_filtered_and_capped(trail: AuditTrail) -> None:
    _fill(trail, 9)
    assert [r.seq for r in trail.recent(3)] == [9, 8, 7]
    assert [r.seq for r in trail.recent(user="U1")] == [8, 5, 2]
    assert [r.seq for r in trail.recent(user="U1", command="restart")] == [8, 5, 2]
    assert trail.recent(command="nope") == []
    assert trail.recent(0) == []
    trail.append("step")  # 10 rows
    for _ in range(200):
        trail.append("step", actor="bulk")
    assert len(trail.recent(10_000)) == 200


def test_export_round_trips(trail: AuditTrail, small_batches: None) -> None:
    _fill(trail, 7)
    out = io.StringIO()
    assert trail.export("jsonl", out) == 7
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [row["seq"] for row in lines] == list(range(1, 8))
    # Each line without its hash is exactly the signed object: verifiable without the database.
    for row in lines:
        assert sign(KEY, {k: v for k, v in row.items() if k != "hash"}) == row["hash"]
    assert json.loads(lines[0]["data"]) == {"i": 0, "note": "héllo ✓"}

    out = io.StringIO()
    assert trail.export("csv", out) == 7
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 7 and list(rows[0]) == list(audit.EXPORT_COLUMNS)
    assert [int(r["seq"]) for r in rows] == list(range(1, 8))
    assert [r["hash"] for r in rows] == [r["hash"] for r in lines]
    assert rows[3]["data"] == lines[3]["data"] and rows[3]["at"] == lines[3]["at"]

    with pytest.raises(ValueError):
        trail.export("xml", io.StringIO())  # type: ignore[arg-type]


# --- the key -----------------------------------------------------------------------------------


def test_load_key_creates_a_private_key_file_and_reuses_it(make_settings: Any) -> None:
    settings = make_settings()
    db_path = Path(settings.hq_database_url.removeprefix("sqlite:///"))
    key_path = Path(f"{db_path}.audit-key")
    assert not key_path.exists()
    key = load_key(settings)
    assert len(key) == 32 and key_path.exists()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_text().strip() == key.hex()
    assert load_key(settings) == key
    assert [p.name for p in key_path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_load_key_in_a_new_directory(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(hq_database_url=f"sqlite:///{tmp_path}/sub/dir/hq.db")
    assert len(load_key(settings)) == 32 and (tmp_path / "sub/dir/hq.db.audit-key").exists()


def test_load_key_rejects_a_corrupt_key_file(make_settings: Any) -> None:
    settings = make_settings()
    Path(settings.hq_database_url.removeprefix("sqlite:///") + ".audit-key").write_text("nope")
    with pytest.raises(SettingsError, match="HQ_AUDIT_KEY"):
        load_key(settings)


def test_load_key_prefers_the_setting(make_settings: Any) -> None:
    settings = make_settings(hq_audit_key="a-long-shared-audit-key-value")
    assert load_key(settings) == b"a-long-shared-audit-key-value"
    assert (
        load_key(make_settings(hq_database_url="postgresql://hq@db/hq", hq_audit_key="k" * 40))
        == b"k" * 40
    )


def test_load_key_refuses_postgresql_without_a_key(make_settings: Any) -> None:
    settings = make_settings(hq_database_url="postgresql://hq:pw@db.example/hq")
    with pytest.raises(SettingsError) as info:
        load_key(settings)
    assert str(info.value) == (
        "HQ_AUDIT_KEY: required with a shared (PostgreSQL) database so every replica signs "
        "the same chain"
    )
