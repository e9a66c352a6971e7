"""A tiny HTTP client with a hard total timeout.

urllib's ``timeout`` bounds each socket operation, not the whole request: a server that trickles
one byte a second never times out. Here a timer shuts the socket at the deadline, whatever the
server does, and the body read is capped.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from commands.infra.gateway import InfraError

MAX_BODY = 1024 * 1024
USER_AGENT = "hq-bot"


class HttpError(InfraError):
    """The request could not be made or did not finish in time."""


@dataclass(frozen=True)
class Response:
    url: str
    status: int
    body: bytes
    headers: Mapping[str, str]
    seconds: float

    def json(self) -> Any:
        """Return the body parsed as JSON. Raise HttpError when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            raise HttpError(
                f"{self.url} answered {self.status} with a body that is not JSON."
            ) from None


def with_query(url: str, params: Mapping[str, str]) -> str:
    """Given a URL and query parameters, return the URL with them encoded."""
    if not params:
        return url
    sep = "&" if urllib.parse.urlsplit(url).query else "?"
    return url + sep + urllib.parse.urlencode(params)


class Http:
    """GET (and HEAD) over http or https with a deadline that covers connecting, sending and
    reading the whole body."""

    def __init__(self, timeout: float = 5.0, max_body: int = MAX_BODY) -> None:
        self.timeout = timeout
        self.max_body = max_body

    def get(
        self,
        url: str,
        *,
        timeout: float | None = None,
        params: Mapping[str, str] | None = None,
        method: str = "GET",
    ) -> Response:
        """Given a URL, return its response (any status). Raise HttpError when it cannot be
        reached or the whole exchange takes longer than ``timeout`` seconds."""
        limit = self.timeout if timeout is None else timeout
        full = with_query(url, params or {})
        parts = urllib.parse.urlsplit(full)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise HttpError(f"{url} is not an http(s) URL.")
        conn_cls = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        conn = conn_cls(parts.hostname, parts.port, timeout=limit)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(limit, expire)
        timer.daemon = True
        started = time.monotonic()
        timer.start()
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            conn.request(method, path, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
            resp = conn.getresponse()
            body = b"" if method == "HEAD" else resp.read(self.max_body + 1)
            if len(body) > self.max_body:
                raise HttpError(f"{url} answered with more than {self.max_body} bytes.")
            headers = {k.lower(): v for k, v in resp.getheaders()}
            if expired.is_set():
                raise TimeoutError
            return Response(full, resp.status, body, headers, time.monotonic() - started)
        except HttpError:
            raise
        except TimeoutError:
            raise HttpError(f"{url} did not answer within {limit:g} s.") from None
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set():
                raise HttpError(f"{url} did not answer within {limit:g} s.") from None
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise HttpError(f"{url} is unreachable: {reason}.") from None
        finally:
            timer.cancel()
            conn.close()
