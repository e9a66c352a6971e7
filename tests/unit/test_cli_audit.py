"""`hq-bot audit verify` and `audit export` as a program, on a trail written by real commands."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _hq(env_file: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "--env-file", str(env_file), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def _trail(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "bot.db"
    env_file = tmp_path / "bot.env"
    env_file.write_text(f"HQ_DATABASE_URL=sqlite:///{db}\n")
    proc = _hq(env_file, "console", stdin="/hq help\n/hq nope\n/hq pending\n/hq audit 5\n")
    assert proc.returncode == 1  # `/hq nope` was rejected
    return env_file, db


def test_an_untouched_trail_verifies(tmp_path: Path) -> None:
    env_file, _ = _trail(tmp_path)
    proc = _hq(env_file, "audit", "verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 rows, chain intact" in proc.stdout


def test_editing_a_row_fails_verify_naming_it(tmp_path: Path) -> None:
    env_file, db = _trail(tmp_path)
    with sqlite3.connect(db) as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    proc = _hq(env_file, "audit", "verify")
    assert proc.returncode == 1
    assert "BROKEN at row 2" in proc.stdout


def test_deleting_and_reordering_rows_fail_verify(tmp_path: Path) -> None:
    env_file, db = _trail(tmp_path)
    with sqlite3.connect(db) as conn:
        for (name,) in list(conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")):
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute("UPDATE audit_events SET seq = 100 WHERE seq = 2")
        conn.execute("UPDATE audit_events SET seq = 2 WHERE seq = 3")
        conn.execute("UPDATE audit_events SET seq = 3 WHERE seq = 100")
    proc = _hq(env_file, "audit", "verify")
    assert proc.returncode == 1 and "BROKEN at row 2" in proc.stdout
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 3")
    proc = _hq(env_file, "audit", "verify")
    assert proc.returncode == 1 and "BROKEN at row 2" in proc.stdout


def test_export_writes_every_row(tmp_path: Path) -> None:
    env_file, _ = _trail(tmp_path)
    jsonl = _hq(env_file, "audit", "export", "--format", "jsonl")
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["kind"] == "command.rejected"
    table = list(
        csv.DictReader(io.StringIO(_hq(env_file, "audit", "export", "--format", "csv").stdout))
    )
    assert len(table) == 4 and table[0]["hash"] == rows[0]["hash"]
