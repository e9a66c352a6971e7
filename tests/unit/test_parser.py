from __future__ import annotations

import pytest

from commands.parser import normalize, parse, tokenize
from commands.registry import build
from commands.spec import Arg, CommandSpec, Option, Plan, Result, UserError


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _spec(name: str, **kwargs: object) -> CommandSpec:
    return CommandSpec(
        name=name,
        summary="test",
        plan=lambda a, c: Plan(command=name, summary=name),
        execute=lambda p, c, g: Result(ok=True, title="done"),
        **kwargs,  # type: ignore[arg-type]
    )


REGISTRY = build(
    [
        _spec(
            "logs",
            args=(Arg("service"),),
            options=(Option("--tail", parse=_positive, default=100, metavar="N"), Option("--grep")),
        ),
        _spec("backup now"),
        _spec("backup list"),
        _spec("restore", args=(Arg("backup", metavar="ID|latest"),), destructive=True),
        _spec("rotate jwt", options=(Option("--logout-all", flag=True),), destructive=True),
    ]
)


def test_smart_quotes_and_long_dashes_are_undone() -> None:
    assert normalize("logs backend \u2014tail 5 \u201cx y\u201d") == 'logs backend --tail 5 "x y"'
    assert tokenize("logs backend \u2014grep \u201cconnection refused\u201d") == [
        "logs",
        "backend",
        "--grep",
        "connection refused",
    ]


def test_multi_word_commands_match_the_longest_name() -> None:
    parsed = parse("backup now", REGISTRY)
    assert parsed.spec.name == "backup now"


def test_options_are_typed_and_defaults_kept() -> None:
    parsed = parse("logs backend --tail 20", REGISTRY)
    assert parsed.args == {"service": "backend", "tail": 20, "grep": None}
    parsed = parse("logs backend --grep=err", REGISTRY)
    assert parsed.args["tail"] == 100 and parsed.args["grep"] == "err"


def test_dry_run_and_reason_are_understood_everywhere() -> None:
    parsed = parse("restore latest --reason \u201cbad deploy\u201d --dry-run", REGISTRY)
    assert parsed.dry_run and parsed.reason == "bad deploy" and parsed.args["backup"] == "latest"


def test_flags_take_no_value() -> None:
    assert parse("rotate jwt --logout-all", REGISTRY).args["logout_all"] is True
    with pytest.raises(UserError):
        parse("rotate jwt --logout-all=yes", REGISTRY)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("frobnicate", "Unknown command `frobnicate`"),
        ("logs", "needs SERVICE"),
        ("logs backend extra", "Unexpected argument `extra`"),
        ("logs backend --tail", "needs a value"),
        ("logs backend --tail 0", "must be at least 1"),
        ("logs backend --tail x", "Bad value for `--tail`"),
        ("logs backend --nope", "Unknown option `--nope`"),
        ('logs "backend', "could not read"),
        ("", "No command given"),
    ],
)
def test_bad_input_gets_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        parse(text, REGISTRY)
    assert message in info.value.message


def test_bad_arguments_carry_the_usage_line() -> None:
    with pytest.raises(UserError) as info:
        parse("logs backend --tail 0", REGISTRY)
    assert info.value.usage == "/hq logs SERVICE [--tail N] [--grep VALUE] [--dry-run]"


def test_a_family_without_subcommand_lists_its_usages() -> None:
    with pytest.raises(UserError) as info:
        parse("backup", REGISTRY)
    assert info.value.usage is not None
    assert "/hq backup now" in info.value.usage and "/hq backup list" in info.value.usage


def test_destructive_usage_asks_for_a_reason() -> None:
    assert REGISTRY["restore"].usage == '/hq restore ID|latest --reason "..." [--dry-run]'


def test_overlong_input_is_refused() -> None:
    with pytest.raises(UserError):
        parse("logs " + "a" * 5000, REGISTRY)


def test_plan_digest_changes_with_its_content() -> None:
    a = Plan(command="restore", summary="restore b-1", data={"backup": "b-1"})
    b = Plan(command="restore", summary="restore b-1", data={"backup": "b-2"})
    assert a.digest() != b.digest()
    assert (
        a.digest()
        == Plan(command="restore", summary="restore b-1", data={"backup": "b-1"}).digest()
    )
