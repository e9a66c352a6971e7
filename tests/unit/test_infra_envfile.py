from __future__ import annotations

from pathlib import Path

import pytest

from commands.infra.envfile import EnvFile, is_secret_key, parse_env
from commands.infra.gateway import InfraError
from commands.redact import default_redactor

TEXT = """\
# Harmoniq
DB_USER=harmoniq
DB_PASSWORD="p@ss word\\"q"
export DB_NAME = harmoniq   # inline comment
JWT_SECRET='single # not a comment'
EMPTY=
URL=http://x/#frag
not an assignment
MINIO_ACCESS_KEY=envfile-access-key-1
"""


def test_values_comments_quotes_and_export_are_understood() -> None:
    values = parse_env(TEXT)
    assert values["DB_USER"] == "harmoniq"
    assert values["DB_PASSWORD"] == 'p@ss word"q'
    assert values["DB_NAME"] == "harmoniq"
    assert values["JWT_SECRET"] == "single # not a comment"
    assert values["EMPTY"] == ""
    assert values["URL"] == "http://x/#frag"
    assert "not" not in values


def test_secret_looking_keys_are_recognised() -> None:
    assert all(map(is_secret_key, ["DB_PASSWORD", "JWT_SECRET", "MINIO_ACCESS_KEY", "API_TOKEN"]))
    assert not any(map(is_secret_key, ["DB_USER", "DB_NAME", "URL"]))


def test_reading_registers_secret_values_with_the_redactor(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(TEXT)
    values = EnvFile(path).read()
    redact = default_redactor()
    assert values["MINIO_ACCESS_KEY"] not in redact("key envfile-access-key-1 used")
    assert "harmoniq" in redact("user harmoniq")


def test_a_missing_file_or_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="does not exist"):
        EnvFile(tmp_path / "missing").read()
    path = tmp_path / ".env"
    path.write_text("DB_USER=x\n")
    with pytest.raises(InfraError, match="does not set DB_PASSWORD"):
        EnvFile(path).require("DB_USER", "DB_PASSWORD")
