from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.settings import Settings, SettingsError, load_settings
from bot.settings_doc import rewrite

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_need_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = load_settings()
    assert settings.hq_database_url.startswith("sqlite:")
    assert settings.hq_compose_command == ["docker", "compose"]


def test_a_wrong_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HQ_APPROVERS", "U0ALICE,not-an-id")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "HQ_APPROVERS" in str(info.value) and "Slack user ID" in str(info.value)


def test_a_bad_token_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "not-a-token-value-123")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "xoxb-" in str(info.value) and "not-a-token-value-123" not in str(info.value)


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HQ_OPERATORS", "U0ALICE, U0BOB")
    assert load_settings().hq_operators == ["U0ALICE", "U0BOB"]


def test_env_file_is_read_and_must_exist(tmp_path: Path) -> None:
    env = tmp_path / "bot.env"
    env.write_text("HQ_OPS_CHANNEL=C0OPS\n")
    assert load_settings(env).hq_ops_channel == "C0OPS"
    with pytest.raises(SettingsError):
        load_settings(tmp_path / "missing.env")


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    table = {m.group(1) for m in re.finditer(r"^\| `([A-Z0-9_]+)` \|", readme, re.M)}
    missing = {name.upper() for name in Settings.model_fields} - table
    assert not missing, f"settings missing from the README table: {sorted(missing)}"
    # The table is generated: defaults and meanings match the code (scripts/settings-table
    # --write regenerates it).
    assert rewrite(readme) == readme


def test_every_secret_setting_is_known_to_the_redactor(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    key = base64.b64encode(b"k" * 32).decode()
    monkeypatch.setenv("HQ_BACKUP_KEY", key)
    monkeypatch.setenv("HQ_AUDIT_KEY", "audit-key-0123456789")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing-0123456789")
    secrets = load_settings().secret_values()
    assert key in secrets and "audit-key-0123456789" in secrets
    assert "signing-0123456789" in secrets
