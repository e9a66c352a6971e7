"""The one way hq-bot runs an external program: an argv tuple, never a shell string.

Every ``docker compose``, ``git`` or ``pg_restore`` call goes through :func:`run` (or
:func:`stream` for output too big to hold, :func:`feed` and :class:`Feed` for input too big
to hold). All raise when the program fails, with a message that is safe to show: the argv and
a tail of stderr pass through the default redactor first.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from commands.redact import default_redactor
from commands.spec import UserError

STDERR_TAIL = 600
CHUNK = 64 * 1024


class InfraError(UserError):
    """A client of the deployment failed. The message is a redacted sentence, safe to show in
    chat; the original exception (if any) is chained for the log only."""

    def __init__(self, message: str) -> None:
        super().__init__(default_redactor()(message))


class CommandFailed(InfraError):
    """An external program exited non-zero (or could not be started)."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        stderr: bytes | str = b"",
        *,
        message: str | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr_tail = tail_text(stderr)
        detail = f": {self.stderr_tail}" if self.stderr_tail else ""
        super().__init__(
            message or f"`{display_argv(argv)}` failed with exit code {returncode}{detail}"
        )


class CommandTimeout(CommandFailed):
    """An external program ran longer than its timeout and was killed."""

    def __init__(self, argv: Sequence[str], timeout: float, stderr: bytes | str = b"") -> None:
        self.timeout = timeout
        message = f"`{display_argv(argv)}` timed out after {timeout:g} s"
        super().__init__(argv, -9, stderr, message=message)


@dataclass(frozen=True)
class Completed:
    """A program that exited 0: its argv, output and how long it took."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def text(self) -> str:
        """Return stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", errors="replace")


def display_argv(argv: Sequence[str]) -> str:
    """Given an argv, return it as one redacted line, the program shown by its base name."""
    words = [Path(argv[0]).name if argv else "", *argv[1:]]
    return default_redactor()(" ".join(words))


def tail_text(data: bytes | str, limit: int = STDERR_TAIL) -> str:
    """Given program output, return its redacted last ``limit`` characters on one line."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    if len(text) > limit:
        text = "..." + text[-limit:]
    return default_redactor()(text)


def _check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, str | bytes) or not argv:
        raise TypeError("argv must be a non-empty sequence of strings, never a shell string")
    words = tuple(argv)
    if not all(isinstance(word, str) for word in words):
        raise TypeError("every argv word must be a str")
    return words


def _env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return None
    merged = dict(os.environ)
    merged.update(env)
    return merged


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    input: bytes | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Given an argv tuple, run it to completion and return its output. ``env`` is added to
    the current environment. Raise CommandFailed on a non-zero exit or a missing program,
    CommandTimeout (after killing it) when it runs longer than ``timeout`` seconds."""
    words = _check_argv(argv)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            words,
            input=input,
            capture_output=True,
            timeout=timeout,
            cwd=cwd,
            env=_env(env),
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandTimeout(words, timeout, exc.stderr or b"") from None
    except OSError as exc:
        raise CommandFailed(words, 127, exc.strerror or type(exc).__name__) from None
    if proc.returncode != 0:
        raise CommandFailed(words, proc.returncode, proc.stderr)
    return Completed(words, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


class Stream:
    """A running program whose stdout is read as it comes. Iterate it for chunks of bytes; when
    stdout ends the iterator raises CommandFailed if the program exited non-zero, so a consumer
    (an upload) never mistakes a failed program's truncated output for the whole. Use it as a
    context manager: leaving early kills the program."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: IO[bytes] | None = None,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = _check_argv(argv)
        self.timeout = timeout
        self.returncode: int | None = None
        self._stderr: deque[bytes] = deque(maxlen=64)
        self._timed_out = threading.Event()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=_env(env),
            )
        except OSError as exc:
            raise CommandFailed(self.argv, 127, exc.strerror or type(exc).__name__) from None
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        self._timer = threading.Timer(timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _read_stderr(self) -> None:
        pipe = self._proc.stderr
        assert pipe is not None
        while chunk := os.read(pipe.fileno(), 4096):
            self._stderr.append(chunk)

    def _expire(self) -> None:
        if self._proc.poll() is None:
            self._timed_out.set()
            self._proc.kill()

    def __iter__(self) -> Iterator[bytes]:
        pipe = self._proc.stdout
        assert pipe is not None
        while chunk := os.read(pipe.fileno(), CHUNK):
            yield chunk
        self._finish()

    def _finish(self) -> None:
        self.returncode = self._proc.wait()
        self._timer.cancel()
        self._drain.join(timeout=5)
        stderr = b"".join(self._stderr)
        if self._timed_out.is_set():
            raise CommandTimeout(self.argv, self.timeout, stderr)
        if self.returncode != 0:
            raise CommandFailed(self.argv, self.returncode, stderr)

    def close(self) -> None:
        """Stop the program if it still runs and release its pipes."""
        self._timer.cancel()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def stream(
    argv: Sequence[str],
    *,
    timeout: float,
    stdin: IO[bytes] | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Stream:
    """Given an argv tuple, start it and return a :class:`Stream` of its stdout. Raise
    CommandFailed at once when the program cannot be started."""
    return Stream(argv, timeout=timeout, stdin=stdin, cwd=cwd, env=env)


class Feed:
    """A running program whose stdin is written as data comes (a pg_restore fed a decrypted
    backup). :meth:`write` pushes bytes, blocking while the program is busy; :meth:`close`
    ends stdin, waits, and raises CommandFailed on a non-zero exit, CommandTimeout when it ran
    longer than ``timeout``. Output is drained in the background and only its tail is kept
    (``Completed.stdout`` is the last 64 KiB). With ``idle`` the program runs at the lowest CPU
    priority (Linux SCHED_IDLE): it gets the CPU that nothing else wants, for work that may lag
    behind (a check that can finish after the dump it reads). Use it as a context manager:
    leaving without :meth:`close` kills the program."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        idle: bool = False,
    ) -> None:
        self.argv = _check_argv(argv)
        self.timeout = timeout
        self.returncode: int | None = None
        self.stopped_reading = False
        self._started = time.monotonic()
        self._stdout: deque[bytes] = deque(maxlen=16)
        self._stderr: deque[bytes] = deque(maxlen=64)
        self._timed_out = threading.Event()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=_env(env),
                bufsize=0,
            )
        except OSError as exc:
            raise CommandFailed(self.argv, 127, exc.strerror or type(exc).__name__) from None
        if idle and hasattr(os, "SCHED_IDLE"):
            with suppress(OSError):
                os.sched_setscheduler(self._proc.pid, os.SCHED_IDLE, os.sched_param(0))
        self._drains = [
            threading.Thread(target=self._drain, args=(self._proc.stdout, self._stdout)),
            threading.Thread(target=self._drain, args=(self._proc.stderr, self._stderr)),
        ]
        for thread in self._drains:
            thread.daemon = True
            thread.start()
        self._timer = threading.Timer(timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()

    @staticmethod
    def _drain(pipe: IO[bytes] | None, keep: deque[bytes]) -> None:
        assert pipe is not None
        while chunk := os.read(pipe.fileno(), CHUNK):
            keep.append(chunk)

    def _expire(self) -> None:
        if self._proc.poll() is None:
            self._timed_out.set()
            self._proc.kill()

    def write(self, data: bytes | memoryview) -> bool:
        """Given bytes, write them all to the program's stdin. Return False (and drop the
        data) once the program has stopped reading (it exited or closed stdin); :meth:`close`
        then tells why."""
        if self.stopped_reading:
            return False
        pipe = self._proc.stdin
        assert pipe is not None
        view = memoryview(data)
        try:
            while view:
                written = os.write(pipe.fileno(), view)
                view = view[written:]
        except (BrokenPipeError, ValueError, OSError):
            self.stopped_reading = True
            return False
        return True

    def close(self) -> Completed:
        """End stdin, wait for the program and return what it printed. Raise CommandFailed on
        a non-zero exit, CommandTimeout when it was killed for running too long."""
        pipe = self._proc.stdin
        if pipe is not None and not pipe.closed:
            with suppress(OSError):
                pipe.close()
        self.returncode = self._proc.wait()
        self._timer.cancel()
        for thread in self._drains:
            thread.join(timeout=5)
        stderr = b"".join(self._stderr)
        if self._timed_out.is_set():
            raise CommandTimeout(self.argv, self.timeout, stderr)
        if self.returncode != 0:
            raise CommandFailed(self.argv, self.returncode, stderr)
        seconds = time.monotonic() - self._started
        return Completed(self.argv, 0, b"".join(self._stdout), stderr, seconds)

    def kill(self) -> None:
        """Stop the program if it still runs and release its pipes."""
        self._timer.cancel()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                with suppress(OSError):
                    pipe.close()

    def __enter__(self) -> Feed:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.returncode is None:
            self.kill()


def feed(
    argv: Sequence[str],
    chunks: Iterable[bytes],
    *,
    timeout: float,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Given an argv tuple and an iterable of bytes, run the program with those bytes as its
    stdin, without holding them in memory. Raise what the iterable raises (after killing the
    program), CommandFailed on a non-zero exit, CommandTimeout after ``timeout`` seconds."""
    with Feed(argv, timeout=timeout, cwd=cwd, env=env) as program:
        for chunk in chunks:
            if not program.write(chunk):
                break
        return program.close()
