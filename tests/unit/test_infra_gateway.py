from __future__ import annotations

import sys
import time

import pytest

from commands.infra import gateway
from commands.infra.gateway import CommandFailed, CommandTimeout, InfraError
from commands.redact import MASK, default_redactor
from commands.spec import UserError

PY = sys.executable


def test_run_returns_stdout_of_an_argv_tuple() -> None:
    done = gateway.run((PY, "-c", "print('hello')"), timeout=10)
    assert done.text == "hello\n" and done.returncode == 0 and done.argv[0] == PY


def test_run_passes_input_and_env() -> None:
    code = "import os, sys; print(sys.stdin.read() + os.environ['HQ_X'])"
    done = gateway.run((PY, "-c", code), timeout=10, input=b"a", env={"HQ_X": "b"})
    assert done.text.strip() == "ab"


def test_a_shell_string_is_refused() -> None:
    with pytest.raises(TypeError):
        gateway.run("echo hi", timeout=5)
    with pytest.raises(TypeError):
        gateway.run((), timeout=5)


def test_a_non_zero_exit_raises_with_code_argv_and_redacted_stderr_tail() -> None:
    default_redactor().add(["gw-secret-value-1"])
    code = "import sys; sys.stderr.write('x' * 2000 + ' boom gw-secret-value-1'); sys.exit(3)"
    with pytest.raises(CommandFailed) as info:
        gateway.run((PY, "-c", code), timeout=10)
    err = info.value
    assert err.returncode == 3 and "exit code 3" in err.message
    assert "boom" in err.message and "gw-secret-value-1" not in err.message and MASK in err.message
    assert len(err.stderr_tail) < 700
    assert isinstance(err, UserError) and isinstance(err, InfraError)


def test_secrets_in_argv_are_redacted_in_the_message() -> None:
    with pytest.raises(CommandFailed) as info:
        gateway.run((PY, "-c", "import sys; sys.exit(1)", "--password", "hunter22x"), timeout=10)
    assert "hunter22x" not in info.value.message


def test_a_missing_program_is_a_command_failure() -> None:
    with pytest.raises(CommandFailed) as info:
        gateway.run(("/nonexistent/hq-program",), timeout=5)
    assert info.value.returncode == 127


def test_a_slow_program_is_killed_at_its_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        gateway.run((PY, "-c", "import time; time.sleep(30)"), timeout=0.5)
    assert time.monotonic() - started < 5
    assert "timed out after 0.5 s" in info.value.message


def test_stream_yields_output_then_raises_when_the_program_fails() -> None:
    code = "import sys; sys.stdout.write('a' * 100000); sys.stdout.flush(); sys.exit(2)"
    chunks: list[bytes] = []
    with gateway.stream((PY, "-c", code), timeout=10) as out, pytest.raises(CommandFailed):
        for chunk in out:
            chunks.append(chunk)
    assert len(b"".join(chunks)) == 100000


def test_stream_succeeds_and_records_the_exit_code() -> None:
    with gateway.stream((PY, "-c", "print('x' * 10)"), timeout=10) as out:
        assert b"".join(out) == b"x" * 10 + b"\n"
        assert out.returncode == 0


def test_stream_is_killed_at_its_timeout() -> None:
    started = time.monotonic()
    code = "import time, sys; print('start', flush=True); time.sleep(30)"
    with gateway.stream((PY, "-c", code), timeout=0.5) as out, pytest.raises(CommandTimeout):
        list(out)
    assert time.monotonic() - started < 5


def test_no_module_uses_a_shell() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    shell = re.compile(r"\bshell\s*=\s*True\b|\bos\.(system|popen)\(")
    sources = [root.glob(f"{package}/**/*.py") for package in ("commands", "bot", "approvals")]
    for path in [p for found in sources for p in found]:
        assert not shell.search(path.read_text()), path
