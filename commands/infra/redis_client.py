"""The deployment's Redis (sessions, Socket.IO adapter) through redis-py, with socket timeouts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from commands.infra.gateway import InfraError


@dataclass(frozen=True)
class RedisMemory:
    """``INFO memory``: bytes used, the configured limit (0 means none) and the policy."""

    used: int
    maxmemory: int
    policy: str
    used_human: str = ""

    @property
    def percent(self) -> float | None:
        """Return used as a percentage of maxmemory, or None when there is no limit."""
        return None if self.maxmemory <= 0 else 100.0 * self.used / self.maxmemory


class Redis:
    """A Redis client built from a URL; every call has a socket timeout. Errors become
    InfraError with the address (never a password) and the reason."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> redis.Redis:
        """The underlying redis-py client (for commands that need more than this wrapper)."""
        with self._lock:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.url,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    health_check_interval=0,
                    retry_on_timeout=False,
                    # redis-py retries 3 times with backoff by default: a check must fail fast
                    retry=Retry(NoBackoff(), 0),
                )
            return self._client

    @property
    def address(self) -> str:
        """Return host:port/db of the URL, without credentials."""
        kwargs = self.client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return str(kwargs["path"])
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except redis.AuthenticationError:
            raise InfraError(f"Redis at {self.address} refused the credentials ({what}).") from None
        except redis.TimeoutError:
            raise InfraError(
                f"Redis at {self.address} did not answer within {self.timeout:g} s ({what})."
            ) from None
        except redis.ConnectionError:
            raise InfraError(f"Redis at {self.address} is unreachable ({what}).") from None
        except redis.RedisError as exc:
            raise InfraError(
                f"Redis at {self.address}: {what} failed ({type(exc).__name__})."
            ) from None

    def ping(self) -> bool:
        """Send PING; return True on PONG. Raise InfraError when Redis does not answer."""
        with self._errors("PING"):
            return bool(self.client.ping())

    def info(self, section: str) -> dict[str, Any]:
        """Return ``INFO section`` as a dict. Raise InfraError when Redis does not answer."""
        with self._errors(f"INFO {section}"):
            return dict(self.client.info(section))

    def memory(self) -> RedisMemory:
        """Return used memory against maxmemory. Raise InfraError when Redis does not answer."""
        info = self.info("memory")
        return RedisMemory(
            used=int(info.get("used_memory", 0)),
            maxmemory=int(info.get("maxmemory", 0)),
            policy=str(info.get("maxmemory_policy", "")),
            used_human=str(info.get("used_memory_human", "")),
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
