"""What the backups added to the infra layer: gateway.feed/Feed (stdin from an iterator),
DockerEngine.exec_stream(on_stderr=...), and the 0004 migration matching the models."""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from approvals.db import make_engine, upgrade
from approvals.models import Base
from commands.infra import gateway
from commands.infra.docker_engine import DockerEngine
from commands.infra.gateway import CommandFailed, CommandTimeout


def test_feed_streams_an_iterator_into_stdin() -> None:
    chunks = (bytes([65 + n % 26]) * 100_000 for n in range(30))
    done = gateway.feed(("wc", "-c"), chunks, timeout=10)
    assert done.text.strip() == "3000000" and done.returncode == 0


def test_feed_raises_on_a_non_zero_exit_with_the_stderr_tail() -> None:
    with pytest.raises(CommandFailed) as info:
        script = "cat >/dev/null; echo broken archive >&2; exit 3"
        gateway.feed(("sh", "-c", script), [b"x"], timeout=10)
    assert info.value.returncode == 3 and "broken archive" in info.value.message


def test_feed_kills_the_program_when_the_iterator_fails() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"first"
        raise ValueError("decryption failed")

    started = time.monotonic()
    with pytest.raises(ValueError, match="decryption failed"):
        gateway.feed(("sleep", "30"), chunks(), timeout=60)
    assert time.monotonic() - started < 5


def test_a_program_that_stops_reading_is_reported_not_written_forever() -> None:
    program = gateway.Feed(("sh", "-c", "head -c 10 >/dev/null; exit 1"), timeout=10)
    results = [program.write(b"y" * 65536) for _ in range(20)]
    assert results[-1] is False and program.stopped_reading
    with pytest.raises(CommandFailed):
        program.close()


def test_feed_times_out() -> None:
    with pytest.raises(CommandTimeout):
        gateway.feed(("sleep", "5"), [b""], timeout=0.3)


def test_feed_refuses_a_shell_string() -> None:
    with pytest.raises(TypeError):
        gateway.feed("cat /etc/passwd", [], timeout=1)  # type: ignore[arg-type]


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(payload)) + payload


# stdout, stderr, an empty stdout frame, and a big stdout frame, as the engine multiplexes them
FRAMES = (
    frame(1, b"PGDMP") + frame(2, b"pg_dump: warning\n") + frame(1, b"") + frame(1, b"d" * 300_000)
)


class RawSock(io.RawIOBase):
    """The hijacked socket exec_start(socket=True) returns (a SocketIO on a unix socket)."""

    def __init__(self, data: bytes, api: Any) -> None:
        self._data = io.BytesIO(data)
        self._api = api

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), 7000))  # a socket returns what it has
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self._api.closed = True
        super().close()


class NpipeLike:
    """A socket object that is not a RawIOBase (Windows named pipes, ssh channels)."""

    def __init__(self, data: bytes, api: Any) -> None:
        self._data = io.BytesIO(data)
        self._api = api

    def recv(self, size: int) -> bytes:
        return self._data.read(size)

    def close(self) -> None:
        self._api.closed = True


class DemuxApi:
    """The docker API as exec_stream uses it, yielding demultiplexed (stdout, stderr) frames."""

    def __init__(self, exit_code: int = 0, raw: bool = True) -> None:
        self.exit_code = exit_code
        self.raw = raw
        self.calls: list[tuple[str, Any]] = []
        self.closed = False

    def containers(self, all: bool, filters: dict[str, Any]) -> list[dict[str, Any]]:
        labels = {
            "com.docker.compose.project": "harmoniq",
            "com.docker.compose.service": "postgres",
        }
        return [{"Id": "c1", "Names": ["/h-postgres-1"], "State": "running", "Labels": labels}]

    def exec_create(self, container: str, cmd: list[str], **kwargs: Any) -> dict[str, str]:
        self.calls.append(("exec_create", kwargs))
        return {"Id": "exec-1"}

    def exec_start(
        self, exec_id: str, stream: bool = False, demux: bool = False, socket: bool = False
    ) -> Any:
        self.calls.append(("exec_start", "socket" if socket else demux))
        api = self
        if socket:
            return RawSock(FRAMES, api) if self.raw else NpipeLike(FRAMES, api)

        raise AssertionError("exec_stream(on_stderr=...) reads the socket")

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        return {"Running": False, "ExitCode": self.exit_code}


class Client:
    def __init__(self, api: DemuxApi) -> None:
        self.api = api


def test_exec_stream_reads_the_raw_socket_and_keeps_stderr_apart() -> None:
    api = DemuxApi()
    engine = DockerEngine("harmoniq", factory=lambda: Client(api))
    errors: list[bytes] = []
    stream = engine.exec_stream(
        "postgres", ["pg_dump"], environment={"PGPASSWORD": "pw"}, on_stderr=errors.append
    )
    assert b"".join(stream) == b"PGDMP" + b"d" * 300_000
    assert errors == [b"pg_dump: warning\n"]
    assert ("exec_start", "socket") in api.calls
    assert api.calls[0][1]["stderr"] is True
    assert api.calls[0][1]["environment"] == {"PGPASSWORD": "pw"}
    stream.close()
    assert api.closed


def test_a_cut_frame_ends_the_output_and_the_exit_code_decides() -> None:
    api = DemuxApi(exit_code=137)
    engine = DockerEngine("harmoniq", factory=lambda: Client(api))
    stream = engine.exec_stream("postgres", ["pg_dump"], on_stderr=lambda _b: None)
    stream._chunks._reader = io.BufferedReader(RawSock(FRAMES[:-1000], api))  # type: ignore[attr-defined]
    with pytest.raises(CommandFailed):
        b"".join(stream)


def test_exec_stream_demultiplexes_through_the_sdk_when_the_socket_is_not_raw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import select

    monkeypatch.delattr(select, "poll")  # the SDK polls real sockets; these are fakes
    monkeypatch.setattr(select, "select", lambda r, w, x: (r, w, x))
    api = DemuxApi(raw=False)
    engine = DockerEngine("harmoniq", factory=lambda: Client(api))
    errors: list[bytes] = []
    stream = engine.exec_stream("postgres", ["pg_dump"], on_stderr=errors.append)
    assert b"".join(stream) == b"PGDMP" + b"d" * 300_000
    assert errors == [b"pg_dump: warning\n"]
    stream.close()
    assert api.closed


def test_exec_stream_with_on_stderr_still_raises_on_a_non_zero_exit() -> None:
    api = DemuxApi(exit_code=1)
    engine = DockerEngine("harmoniq", factory=lambda: Client(api))
    stream = engine.exec_stream("postgres", ["pg_dump"], on_stderr=lambda _b: None)
    with pytest.raises(CommandFailed):
        b"".join(stream)
    with pytest.raises(ValueError):
        engine.exec_stream("postgres", ["pg_dump"], stderr=True, on_stderr=lambda _b: None)


def test_the_backup_tables_match_their_migration(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/bot.db")
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    mine = [d for d in diff if "backup" in repr(d)]
    assert mine == []


class SilentSock(RawSock):
    def readinto(self, buffer: Any) -> int:
        raise TimeoutError("timed out")


def test_a_silent_exec_raises_timeout_rather_than_ending_quietly() -> None:
    api = DemuxApi()
    engine = DockerEngine("harmoniq", factory=lambda: Client(api))
    stream = engine.exec_stream("postgres", ["pg_dump"], on_stderr=lambda _b: None)
    stream._chunks._reader = io.BufferedReader(SilentSock(b"", api))  # type: ignore[attr-defined]
    with pytest.raises(TimeoutError):
        b"".join(stream)


def test_an_idle_feed_runs_at_the_lowest_cpu_priority() -> None:
    program = gateway.Feed(("sleep", "5"), timeout=10, idle=True)
    try:
        policy = os.sched_getscheduler(program._proc.pid)
    finally:
        program.kill()
    assert policy == os.SCHED_IDLE
