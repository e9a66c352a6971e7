"""The deployment's PostgreSQL over TCP with psycopg 3.

Credentials come from the deployment's ``.env`` (``DB_USER``, ``DB_PASSWORD``, ``DB_NAME``), read
again for every connection so a rotated password is used at once; host and port come from
settings. No error message ever contains the password.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from commands.infra.gateway import InfraError

USER_KEY, PASSWORD_KEY, DB_KEY = "DB_USER", "DB_PASSWORD", "DB_NAME"


@dataclass(frozen=True)
class ConnectionUsage:
    """Client connections against what clients may use: max_connections minus the slots
    reserved for superusers (and, from PostgreSQL 16, for pg_use_reserved_connections)."""

    clients: int
    max_connections: int
    reserved: int

    @property
    def usable(self) -> int:
        return max(self.max_connections - self.reserved, 1)

    @property
    def percent(self) -> float:
        return 100.0 * self.clients / self.usable


USAGE_SQL = """
SELECT
  (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
  current_setting('max_connections')::int,
  current_setting('superuser_reserved_connections')::int
    + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)
"""


def _reason(exc: BaseException) -> str:
    """Given a psycopg error, return its first useful line (libpq never prints a password)."""
    state = getattr(exc, "sqlstate", None)
    if state == "28P01":
        return "password authentication failed"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    text = re.sub(r"^connection failed:\s*", "", text)
    text = re.sub(
        r'^connection to server at "[^"]*"(?:\s*\([^)]*\))?, port \d+ failed:\s*', "", text
    )
    return text[:300]


class Postgres:
    """Connections to the deployment's database. ``env`` returns the ``.env`` values."""

    def __init__(
        self,
        host: str,
        port: int,
        env: Callable[[], Mapping[str, str]],
        timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._env = env

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def credentials(self) -> tuple[str, str, str]:
        """Return (user, password, database) from the env file. Raise InfraError naming any
        missing key."""
        values = self._env()
        missing = [k for k in (USER_KEY, PASSWORD_KEY, DB_KEY) if not values.get(k)]
        if missing:
            raise InfraError(f"The deployment's env file does not set {', '.join(missing)}.")
        return values[USER_KEY], values[PASSWORD_KEY], values[DB_KEY]

    @contextmanager
    def connect(self, *, autocommit: bool = True, dbname: str | None = None) -> Iterator[Any]:
        """Yield an open psycopg connection (closed afterwards). Raise InfraError, without the
        password, when it cannot connect."""
        user, password, database = self.credentials()
        try:
            conn = psycopg.connect(
                host=self.host,
                port=self.port,
                user=user,
                password=password,
                dbname=dbname or database,
                # libpq takes whole seconds and treats anything below 2 as 2
                connect_timeout=max(2, math.ceil(self.timeout)),
                application_name="hq-bot",
                autocommit=autocommit,
                options=f"-c statement_timeout={int(self.timeout * 1000)}",
            )
        except psycopg.Error as exc:
            raise InfraError(
                f"PostgreSQL at {self.address} (user {user}): {_reason(exc)}."
            ) from None
        try:
            yield conn
        except psycopg.Error as exc:
            raise InfraError(f"PostgreSQL at {self.address}: {_reason(exc)}.") from None
        finally:
            conn.close()

    def ping(self) -> str:
        """Connect and run SELECT 1 (what pg_isready proves, plus authentication); return the
        server version. Raise InfraError when that fails."""
        with self.connect() as conn:
            conn.execute("SELECT 1").fetchone()
            return str(conn.info.parameter_status("server_version") or "")

    def connection_usage(self) -> ConnectionUsage:
        """Return client connections against usable max_connections. Raise InfraError when
        PostgreSQL cannot be asked."""
        with self.connect() as conn:
            row = conn.execute(USAGE_SQL).fetchone()
        return ConnectionUsage(
            clients=int(row[0]), max_connections=int(row[1]), reserved=int(row[2])
        )
