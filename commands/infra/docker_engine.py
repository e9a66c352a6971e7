"""The local Docker Engine through the docker SDK (API 1.41, the engine 20.10 baseline).

Containers are found by the compose labels (``com.docker.compose.project`` and
``com.docker.compose.service``), so this works without the compose CLI.
"""

from __future__ import annotations

import contextlib
import functools
import io
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.utils.socket import demux_adaptor, frames_iter

from commands.infra.gateway import CommandFailed, InfraError, display_argv, tail_text

API_VERSION = "1.41"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
FRAME_BUFFER = 256 * 1024


@dataclass(frozen=True)
class ContainerInfo:
    """A container of the project: its state and, when it has a health check, its health."""

    id: str
    name: str
    service: str
    state: str
    health: str
    image: str
    number: int = 1

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class ContainerStats:
    """One-shot resource use of a container, computed the way ``docker stats`` does."""

    name: str
    service: str
    cpu_percent: float
    memory_used: int
    memory_limit: int
    online_cpus: int

    @property
    def memory_percent(self) -> float:
        return 100.0 * self.memory_used / self.memory_limit if self.memory_limit else 0.0


def cpu_percent(stats: dict[str, Any]) -> tuple[float, int]:
    """Given a stats sample (with ``precpu_stats``), return (CPU %, online CPUs) as the docker
    CLI computes it: 100 % is one core fully used."""
    cpu = stats.get("cpu_stats") or {}
    pre = stats.get("precpu_stats") or {}
    total = (cpu.get("cpu_usage") or {}).get("total_usage", 0)
    pre_total = (pre.get("cpu_usage") or {}).get("total_usage", 0)
    system = cpu.get("system_cpu_usage") or 0
    pre_system = pre.get("system_cpu_usage") or 0
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or ())
    online = int(online or 1)
    cpu_delta = total - pre_total
    system_delta = system - pre_system
    if cpu_delta <= 0 or system_delta <= 0:
        return 0.0, online
    return cpu_delta / system_delta * online * 100.0, online


def memory_used(stats: dict[str, Any]) -> tuple[int, int]:
    """Given a stats sample, return (used bytes, limit bytes) as the docker CLI shows them: the
    usage minus the page cache that can be dropped (``inactive_file`` on cgroup v2,
    ``total_inactive_file`` on v1)."""
    mem = stats.get("memory_stats") or {}
    usage = int(mem.get("usage") or 0)
    detail = mem.get("stats") or {}
    if "inactive_file" in detail:
        cache = int(detail["inactive_file"])
    else:
        cache = int(detail.get("total_inactive_file", 0))
    used = usage - cache if cache < usage else usage
    return used, int(mem.get("limit") or 0)


class ExecStream:
    """Output of a command run inside a container. Iterate it for chunks of bytes; once the
    output ends :attr:`exit_code` is set, and with ``check`` a non-zero exit raises
    CommandFailed, so a reader never takes a failed command's output for complete."""

    def __init__(
        self,
        api: Any,
        exec_id: str,
        chunks: Iterator[bytes],
        argv: Sequence[str],
        check: bool,
    ) -> None:
        self._api = api
        self._id = exec_id
        self._chunks = chunks
        self.argv = tuple(argv)
        self.check = check
        self.exit_code: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            if chunk:
                yield chunk
        self.exit_code = self._wait_exit()
        if self.check and self.exit_code != 0:
            raise CommandFailed(self.argv, self.exit_code)

    def _wait_exit(self) -> int:
        # the output can end a moment before the engine records the exit code
        for _ in range(50):
            info = self._api.exec_inspect(self._id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            time.sleep(0.1)
        return -1

    def read(self) -> bytes:
        """Return the whole output (for small outputs)."""
        return b"".join(self)

    def close(self) -> None:
        """Stop reading: close the connection to the engine, so the command inside the
        container gets a broken pipe on its next write (a consumer that gave up stops it)."""
        closer = getattr(self._chunks, "close", None)
        if callable(closer):
            closer()


class _RawFrames:
    """The stdout pieces of an exec's hijacked socket, demultiplexed here from the engine's
    8-byte frame headers and read in large blocks (the SDK makes several system calls per frame
    of ~10 KB, which is most of a big dump's cost in this process); stderr pieces go to a
    callback. Like the SDK's stream, a broken connection ends the output: the exit code that
    ExecStream checks next tells whether it was complete. A silence longer than the client's
    timeout raises TimeoutError."""

    def __init__(self, sock: io.RawIOBase, on_stderr: Callable[[bytes], None]) -> None:
        self._sock = sock
        self._reader = io.BufferedReader(sock, buffer_size=FRAME_BUFFER)
        self._on_stderr = on_stderr

    def __iter__(self) -> _RawFrames:
        return self

    def __next__(self) -> bytes:
        read = self._reader.read
        while True:
            try:
                header = read(8)
                if len(header) < 8:
                    raise StopIteration
                kind, size = struct.unpack(">BxxxL", header)
                payload = read(size)
            except TimeoutError:
                raise  # silence longer than the client's timeout: the caller says what it means
            except (OSError, ValueError):
                raise StopIteration from None
            if len(payload) < size:
                raise StopIteration
            if kind == 2:
                self._on_stderr(payload)
            elif payload:
                return payload

    def close(self) -> None:
        real = getattr(self._sock, "_sock", None)
        if real is not None:
            with contextlib.suppress(OSError):
                real.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                real.close()
        with contextlib.suppress(OSError):
            self._sock.close()


class _Demuxed:
    """The stdout pieces of a demultiplexed exec stream; stderr pieces go to a callback."""

    def __init__(
        self,
        frames: Any,
        on_stderr: Callable[[bytes], None],
        closer: Callable[[], Any] | None = None,
    ) -> None:
        self._frames = frames
        self._iter = iter(frames)
        self._on_stderr = on_stderr
        self._closer = closer

    def __iter__(self) -> _Demuxed:
        return self

    def __next__(self) -> bytes:
        while True:
            out, err = next(self._iter)
            if err:
                self._on_stderr(err)
            if out:
                return bytes(out)

    def close(self) -> None:
        for closer in (getattr(self._frames, "close", None), self._closer):
            if callable(closer):
                with contextlib.suppress(OSError):
                    closer()


class DockerEngine:
    """The containers of one compose project on the local engine."""

    def __init__(
        self, project: str, *, timeout: float = 30.0, factory: Callable[[], Any] | None = None
    ) -> None:
        self.project = project
        self.timeout = timeout
        self._factory = factory or (
            lambda: docker.from_env(version=API_VERSION, timeout=int(max(timeout, 1)))
        )
        self._lock = threading.Lock()
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The docker SDK client (built on first use). Raise InfraError when the engine is not
        reachable."""
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._factory()
                except DockerException as exc:
                    raise InfraError(
                        f"The Docker Engine is not reachable ({type(exc).__name__})."
                    ) from None
            return self._client

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except NotFound:
            raise InfraError(f"Docker: {what}: not found.") from None
        except APIError as exc:
            explanation = tail_text(str(exc.explanation or exc), 300)
            raise InfraError(f"Docker: {what} failed: {explanation}") from None
        except DockerException as exc:
            raise InfraError(f"Docker: {what} failed ({type(exc).__name__}).") from None
        except OSError as exc:  # requests' ConnectionError is an OSError
            raise InfraError(f"Docker: {what} failed ({type(exc).__name__}).") from None

    def _filters(self, service: str | None) -> dict[str, Any]:
        labels = [f"{PROJECT_LABEL}={self.project}"]
        if service:
            labels.append(f"{SERVICE_LABEL}={service}")
        return {"label": labels}

    def containers(self, service: str | None = None, *, all: bool = True) -> list[ContainerInfo]:
        """Return the project's containers (of one service when given), sorted by service and
        number."""
        raw = self._call(
            "list containers",
            lambda: self.client.api.containers(all=all, filters=self._filters(service)),
        )
        out = []
        for item in raw:
            labels = item.get("Labels") or {}
            status = str(item.get("Status", ""))
            health = ""
            for word in ("healthy", "unhealthy", "health: starting"):
                if f"({word})" in status:
                    health = word.replace("health: ", "")
                    break
            names = item.get("Names") or [item.get("Id", "")[:12]]
            out.append(
                ContainerInfo(
                    id=str(item.get("Id", "")),
                    name=str(names[0]).lstrip("/"),
                    service=str(labels.get(SERVICE_LABEL, "")),
                    state=str(item.get("State", "")),
                    health=health,
                    image=str(item.get("Image", "")),
                    number=int(labels.get(NUMBER_LABEL, 1) or 1),
                )
            )
        return sorted(out, key=lambda c: (c.service, c.number, c.name))

    def container(self, service: str) -> ContainerInfo:
        """Return the first running container of ``service``. Raise InfraError when none runs."""
        running = [c for c in self.containers(service) if c.running]
        if not running:
            raise InfraError(f"No running container for service {service}.")
        return running[0]

    def health(self, service: str | None = None) -> dict[str, str]:
        """Return container name -> health (``healthy``, ``unhealthy``, ``starting``, or the
        state when it has no health check)."""
        return {c.name: c.health or c.state for c in self.containers(service)}

    def exec_stream(
        self,
        service: str,
        argv: Sequence[str],
        *,
        user: str | None = None,
        stderr: bool = False,
        check: bool = True,
        environment: dict[str, str] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
    ) -> ExecStream:
        """Start ``argv`` in the service's running container and return its output stream
        (stdout only unless ``stderr``). With ``on_stderr``, stderr is kept apart from the
        output and each piece of it is handed to that function. Raise InfraError when it cannot
        be started."""
        words = tuple(argv)
        if isinstance(argv, str) or not words:
            raise TypeError("argv must be a non-empty sequence of strings")
        if on_stderr is not None and stderr:
            raise ValueError("stderr=True mixes stderr into the output; on_stderr keeps it apart")
        target = self.container(service)
        api = self.client.api
        what = f"exec `{display_argv(words)}` in {target.name}"
        created = self._call(
            what,
            lambda: api.exec_create(
                target.id,
                list(words),
                stdout=True,
                stderr=stderr or on_stderr is not None,
                user=user or "",
                environment=environment,
            ),
        )
        exec_id = created["Id"]
        if on_stderr is not None:
            sock = self._call(what, lambda: api.exec_start(exec_id, socket=True))
            if isinstance(sock, io.RawIOBase):  # a unix or TCP socket: read it in big blocks
                return ExecStream(api, exec_id, _RawFrames(sock, on_stderr), words, check)
            frames = (demux_adaptor(*frame) for frame in frames_iter(sock, False))
            demuxed = _Demuxed(frames, on_stderr, closer=getattr(sock, "close", None))
            return ExecStream(api, exec_id, demuxed, words, check)
        chunks = self._call(what, lambda: api.exec_start(exec_id, stream=True, demux=False))
        return ExecStream(api, exec_id, iter(chunks), words, check)

    def logs(self, service: str, *, tail: int = 100, since: datetime | int | None = None) -> str:
        """Return the last ``tail`` lines (stdout and stderr, in order) of each of the
        service's containers."""
        parts = []
        for info in self.containers(service):
            fetch = functools.partial(
                self.client.api.logs, info.id, stdout=True, stderr=True, tail=tail, since=since
            )
            raw = self._call(f"logs of {info.name}", fetch)
            parts.append(bytes(raw).decode("utf-8", errors="replace"))
        return "".join(parts)

    def stats(self, container_id: str) -> dict[str, Any]:
        """Return one stats sample of a container (with the previous sample, so CPU % can be
        computed; the engine takes about a second)."""
        result: dict[str, Any] = self._call(
            f"stats of {container_id[:12]}",
            lambda: self.client.api.stats(container_id, stream=False),
        )
        return result

    def container_stats(self, info: ContainerInfo) -> ContainerStats:
        """Return CPU % and memory use of a running container, as ``docker stats`` shows."""
        sample = self.stats(info.id)
        cpu, online = cpu_percent(sample)
        used, limit = memory_used(sample)
        return ContainerStats(info.name, info.service, cpu, used, limit, online)

    def restart(self, service: str, *, timeout: int = 10) -> list[str]:
        """Restart every container of the service; return their names."""
        names = []
        for info in self.containers(service):
            again = functools.partial(self.client.api.restart, info.id, timeout=timeout)
            self._call(f"restart {info.name}", again)
            names.append(info.name)
        return names

    def inspect(self, container_id: str) -> dict[str, Any]:
        """Return the engine's inspect document of a container."""
        result: dict[str, Any] = self._call(
            f"inspect {container_id[:12]}",
            lambda: self.client.api.inspect_container(container_id),
        )
        return result

    def info(self) -> dict[str, Any]:
        """Return ``docker info`` (LoggingDriver, DockerRootDir, ...)."""
        result: dict[str, Any] = self._call("info", lambda: self.client.api.info())
        return result

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
