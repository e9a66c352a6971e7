from __future__ import annotations

from commands.redact import MASK, Redactor, fingerprint


def test_known_secrets_are_masked_longest_first() -> None:
    redact = Redactor(["s3cretvalue", "s3cretvalue-longer"])
    assert redact("a s3cretvalue-longer b s3cretvalue") == f"a {MASK} b {MASK}"


def test_token_shapes_and_password_options_are_masked() -> None:
    redact = Redactor()
    token = "xoxb-" + "1234567890-abcdefghij"
    assert token not in redact(f"token {token}")
    assert "hunter22" not in redact("--password hunter22")
    assert "pw123456" not in redact("postgresql://harmoniq:pw123456@127.0.0.1/db")
    assert "DB_PASSWORD=" in redact("DB_PASSWORD=abcdefgh")
    assert "abcdefgh" not in redact("DB_PASSWORD=abcdefgh")


def test_short_values_are_not_treated_as_secrets() -> None:
    assert Redactor(["ab"])("ab cd") == "ab cd"


def test_fingerprint_is_stable_and_hides_the_value() -> None:
    assert fingerprint("value") == fingerprint(b"value")
    assert "value" not in fingerprint("value") and fingerprint("value").startswith("sha256:")


def test_command_words_ending_like_an_option_are_kept() -> None:
    redact = Redactor()
    assert redact('rotate db-password --reason "leak"') == 'rotate db-password --reason "leak"'
    assert redact("rotate turn-secret --reason x") == "rotate turn-secret --reason x"
    assert "hunter22" not in redact("x --secret=hunter22")
