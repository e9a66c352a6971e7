"""Writing the deployment's .env (issue 6): only the given keys change, atomically, with the old
mode and owner, and new values are masked before they are written."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from commands.infra import envfile
from commands.infra.envfile import EnvFile, format_value, parse_env, update_env_text
from commands.infra.gateway import InfraError
from commands.redact import default_redactor

TEXT = """\
# Harmoniq deployment settings
COMPOSE_PROJECT_NAME=harmoniq

# PostgreSQL
DB_USER=harmoniq
DB_PASSWORD=old-password-value-1   # rotated by hq-bot
export JWT_SECRET = "old-jwt-secret-value-2"
MINIO_SECRET_KEY='old-minio-secret-3'
not an assignment, kept as is
COTURN_SECRET=old-turn-secret-4
"""


def _write(tmp_path: Path, text: str = TEXT, mode: int = 0o600) -> Path:
    path = tmp_path / ".env"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_only_the_given_keys_change_and_every_other_line_stays_byte_for_byte() -> None:
    new = update_env_text(TEXT, {"DB_PASSWORD": "new-password-value", "COTURN_SECRET": "t2"})
    old_lines, new_lines = TEXT.splitlines(), new.splitlines()
    changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b]
    assert [old_lines[i].split("=")[0] for i in changed] == ["DB_PASSWORD", "COTURN_SECRET"]
    assert new_lines[changed[0]] == "DB_PASSWORD=new-password-value   # rotated by hq-bot"
    assert parse_env(new) == {
        **parse_env(TEXT),
        "DB_PASSWORD": "new-password-value",
        "COTURN_SECRET": "t2",
    }


def test_export_spacing_and_the_quote_of_the_old_value_are_kept() -> None:
    new = update_env_text(TEXT, {"JWT_SECRET": "abc+/def==", "MINIO_SECRET_KEY": "m-2"})
    assert 'export JWT_SECRET = "abc+/def=="\n' in new
    assert "MINIO_SECRET_KEY='m-2'\n" in new


def test_every_line_that_sets_the_key_changes_and_a_missing_key_is_appended() -> None:
    text = "A=1\nB=2\nA=3"  # no final newline
    new = update_env_text(text, {"A": "x", "C": "y"})
    assert new == "A=x\nB=2\nA=x\nC=y\n"


def test_a_value_that_needs_quotes_is_single_quoted_and_reads_back_unchanged() -> None:
    for value in ("has space", "hash#inside", "dollar$VAR", 'dq"inside', "back\\slash", ""):
        new = update_env_text("K=old\n", {"K": value})
        assert parse_env(new)["K"] == value, new
    assert format_value("plain+/=") == "plain+/="
    assert format_value("a b") == "'a b'"
    assert format_value("a$b", '"') == "'a$b'"  # double quotes would interpolate


def test_a_value_no_line_can_hold_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError) as info:
        update_env_text("K=old\n", {"K": "line\nbreak-secret"})
    assert "K:" in str(info.value) and "break-secret" not in str(info.value)
    with pytest.raises(ValueError):
        format_value("it's a $value")


def test_update_keeps_mode_and_owner_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = _write(tmp_path, mode=0o640)
    if os.geteuid() == 0:
        os.chown(path, 4321, 4322)
    EnvFile(path).update({"DB_PASSWORD": "rotated-password-5"})
    st = path.stat()
    assert st.st_mode & 0o777 == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (4321, 4322)
    assert EnvFile(path).read()["DB_PASSWORD"] == "rotated-password-5"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]


def test_the_new_file_is_fsynced_renamed_and_the_folder_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(f"rename {Path(src).parent == tmp_path}")
        real_replace(src, dst)

    monkeypatch.setattr(envfile.os, "fsync", fsync)
    monkeypatch.setattr(envfile.os, "replace", replace)
    inode = path.stat().st_ino
    EnvFile(path).update({"COTURN_SECRET": "rotated-turn-6"})
    assert events == ["fsync-file", "rename True", "fsync-dir"]
    assert path.stat().st_ino != inode  # a new file took the name: readers see old or new


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path)

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(envfile.os, "replace", fail)
    with pytest.raises(InfraError) as info:
        EnvFile(path).update({"DB_PASSWORD": "never-written-7"})
    assert "left unchanged" in info.value.message and "never-written-7" not in info.value.message
    assert path.read_text() == TEXT
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]


def test_expect_refuses_when_someone_else_changed_the_value(tmp_path: Path) -> None:
    path = _write(tmp_path)
    env = EnvFile(path)
    with pytest.raises(InfraError) as info:
        env.update({"DB_PASSWORD": "new-8"}, expect={"DB_PASSWORD": "not-what-it-is"})
    assert "DB_PASSWORD" in info.value.message and "nothing was written" in info.value.message
    assert "not-what-it-is" not in info.value.message
    assert path.read_text() == TEXT
    env.update({"DB_PASSWORD": "new-8"}, expect={"DB_PASSWORD": "old-password-value-1"})
    assert env.read()["DB_PASSWORD"] == "new-8"


def test_new_values_are_masked_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path)
    seen: list[str] = []
    real = envfile.atomic_replace

    def spy(target: Path, data: bytes) -> None:
        seen.append(default_redactor()("value fresh-secret-value-9 here"))
        real(target, data)

    monkeypatch.setattr(envfile, "atomic_replace", spy)
    EnvFile(path).update({"JWT_SECRET": "fresh-secret-value-9"})
    assert seen == ["value [redacted] here"]


def test_a_symlinked_env_file_is_replaced_at_its_target(tmp_path: Path) -> None:
    real_dir = tmp_path / "secrets"
    real_dir.mkdir()
    target = _write(real_dir)
    link = tmp_path / ".env"
    link.symlink_to(target)
    EnvFile(link).update({"COTURN_SECRET": "via-link-10"})
    assert link.is_symlink()
    assert parse_env(target.read_text())["COTURN_SECRET"] == "via-link-10"


def test_concurrent_writers_of_different_keys_both_land(tmp_path: Path) -> None:
    path = _write(tmp_path)
    errors: list[BaseException] = []

    def write(key: str, count: int) -> None:
        try:
            for n in range(count):
                EnvFile(path).update({key: f"{key.lower()}-value-{n:03d}"})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(key, 25))
        for key in ("DB_PASSWORD", "JWT_SECRET", "COTURN_SECRET")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    values = parse_env(path.read_text())
    assert values["DB_PASSWORD"] == "db_password-value-024"
    assert values["JWT_SECRET"] == "jwt_secret-value-024"
    assert values["COTURN_SECRET"] == "coturn_secret-value-024"
    assert values["DB_USER"] == "harmoniq"
