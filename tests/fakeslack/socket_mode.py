"""A fake of Slack's Socket Mode WebSocket endpoint.

``FakeSlack``'s ``apps.connections.open`` hands out :meth:`FakeSocketMode.new_url`; a client
(slack_sdk's built-in ``SocketModeClient``, which bolt's ``SocketModeHandler`` uses) connects, gets
a ``hello``, and is then sent envelopes (``slash_commands``, ``interactive``, ``events_api``) with
the ``send_*`` methods. What the client sends back (acks) is recorded; :meth:`wait_ack` waits for
the ack of one envelope.

Ping/pong is answered by the ``websockets`` library on both sides; :meth:`ping` checks the client
answers. Envelopes go to the most recently opened connection, as Slack sends each envelope on one
of the app's connections.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Self

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from ._base import Background, strings
from .signing import DEFAULT_VERIFICATION_TOKEN, block_actions_payload, slash_command_payload


class FakeSocketMode(Background):
    """A Socket Mode server on 127.0.0.1 (``websockets`` sync server in a background thread)."""

    def __init__(
        self,
        *,
        app_id: str = "A1",
        team_id: str = "T1",
        bot_user_id: str = "UBOT",
        port: int = 0,
        send_hello: bool = True,
        ping_interval: float | None = 0.25,
        close_timeout: float = 2.0,
    ) -> None:
        self.app_id = app_id
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self._port = port
        self._send_hello = send_hello
        # Frequent keepalive pings also wake the built-in SocketModeClient's blocking recv(), so
        # its close() returns in about a second instead of waiting out its 3 s socket timeout.
        self._ping_interval = ping_interval
        self._close_timeout = close_timeout
        self._cond = threading.Condition()
        self._open: list[ServerConnection] = []
        self._connections_total = 0
        self._tickets_issued = 0
        self._paths: list[str] = []
        self._received: list[dict[str, Any]] = []
        self._raw_received: list[str] = []
        self._acks: dict[str, dict[str, Any]] = {}
        self._sent: list[dict[str, Any]] = []
        self._server: Server | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._server = serve(
            self._handle,
            "127.0.0.1",
            self._port,
            compression=None,
            ping_interval=self._ping_interval,
            close_timeout=self._close_timeout,
            open_timeout=5,
        )
        self._run_in_background(self._server.serve_forever, "fakeslack-socket-mode")
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
        self._join_background()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeSocketMode is not started")
        return int(self._server.socket.getsockname()[1])

    @property
    def url(self) -> str:
        """The bare endpoint, ``ws://127.0.0.1:PORT/link/``."""
        return f"ws://127.0.0.1:{self.port}/link/"

    def new_url(self) -> str:
        """A fresh connection URL, as ``apps.connections.open`` issues one per call."""
        with self._cond:
            self._tickets_issued += 1
            ticket = self._tickets_issued
        return f"{self.url}?ticket=fake-ticket-{ticket}&app_id={self.app_id}"

    # ------------------------------------------------------------------ connection handling

    def _hello(self, num_connections: int) -> dict[str, Any]:
        return {
            "type": "hello",
            "num_connections": num_connections,
            "debug_info": {
                "host": "fakeslack-127.0.0.1",
                "build_number": 1,
                "approximate_connection_time": 18060,
            },
            "connection_info": {"app_id": self.app_id},
        }

    def _handle(self, connection: ServerConnection) -> None:
        with self._cond:
            num = len(self._open) + 1
            self._paths.append(connection.request.path if connection.request else "")
        try:
            if self._send_hello:
                connection.send(json.dumps(self._hello(num)))
            with self._cond:
                self._open.append(connection)
                self._connections_total += 1
                self._cond.notify_all()
            for message in connection:
                text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
                self._record(text)
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                if connection in self._open:
                    self._open.remove(connection)
                self._cond.notify_all()

    def _record(self, text: str) -> None:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        with self._cond:
            self._raw_received.append(text)
            if isinstance(parsed, dict):
                self._received.append(parsed)
                envelope_id = parsed.get("envelope_id")
                if isinstance(envelope_id, str):
                    self._acks[envelope_id] = parsed
            self._cond.notify_all()

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        with self._cond:
            return bool(self._open)

    @property
    def open_connections(self) -> int:
        with self._cond:
            return len(self._open)

    @property
    def connections_total(self) -> int:
        """How many connections completed the handshake since start (reconnects count)."""
        with self._cond:
            return self._connections_total

    @property
    def tickets_issued(self) -> int:
        with self._cond:
            return self._tickets_issued

    @property
    def paths(self) -> list[str]:
        """Request paths (with query) of every WebSocket handshake seen."""
        with self._cond:
            return list(self._paths)

    @property
    def received(self) -> list[dict[str, Any]]:
        """Every JSON message a client sent (acks and anything else), oldest first."""
        with self._cond:
            return list(self._received)

    @property
    def acks(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return dict(self._acks)

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Every message this fake sent to a client (not counting ``hello``)."""
        with self._cond:
            return list(self._sent)

    def all_text(self) -> str:
        """Everything clients sent, raw and with JSON string values unescaped, as one string."""
        with self._cond:
            raw = list(self._raw_received)
            parsed = list(self._received)
        parts = raw + [s for message in parsed for s in strings(message)]
        return "\n".join(parts)

    def reset(self) -> None:
        """Forget what was sent and received (connections stay open)."""
        with self._cond:
            self._received.clear()
            self._raw_received.clear()
            self._acks.clear()
            self._sent.clear()
            self._paths.clear()

    def wait_connected(self, timeout: float = 5.0, *, count: int = 1, total: int = 0) -> None:
        """Wait until ``count`` connections are open and ``total`` were ever opened.

        ``total`` is for reconnects: after :meth:`send_disconnect`, ``wait_connected(total=2)``.
        Raises AssertionError on timeout.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._open) < count or self._connections_total < total:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"Socket Mode: wanted {count} open / {total} total connection(s) within "
                        f"{timeout}s; open: {len(self._open)}, total: {self._connections_total}, "
                        f"tickets issued: {self._tickets_issued}"
                    )
                self._cond.wait(remaining)

    def wait_disconnected(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._open:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{len(self._open)} connection(s) still open")
                self._cond.wait(remaining)

    def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The client's ack for ``envelope_id`` (``{"envelope_id": ..., "payload"?: ...}``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while envelope_id not in self._acks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = [m.get("envelope_id") for m in self._received]
                    raise AssertionError(
                        f"no ack for envelope {envelope_id} within {timeout}s; acks seen: {got}"
                    )
                self._cond.wait(remaining)
            return self._acks[envelope_id]

    # ------------------------------------------------------------------ sending

    def _latest(self, timeout: float) -> ServerConnection:
        self.wait_connected(timeout)
        with self._cond:
            return self._open[-1]

    def send(self, message: dict[str, Any], timeout: float = 5.0) -> None:
        """Send any JSON message on the newest open connection (waits for one)."""
        connection = self._latest(timeout)
        connection.send(json.dumps(message))
        with self._cond:
            self._sent.append(message)

    def send_envelope(
        self,
        envelope_type: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool = False,
        envelope_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        envelope_id = envelope_id or str(uuid.uuid4())
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id,
            "type": envelope_type,
            "accepts_response_payload": accepts_response_payload,
            "payload": payload,
        }
        if extra:
            envelope.update(extra)
        self.send(envelope)
        return envelope_id

    def send_slash_command(
        self,
        text: str,
        user_id: str = "U1",
        channel_id: str = "C1",
        *,
        envelope_id: str | None = None,
        **fields: Any,
    ) -> str:
        """Send a ``slash_commands`` envelope; returns its envelope_id.

        ``fields`` are :func:`slash_command_payload`'s (``user_name``, ``command``,
        ``response_url``...); the team and app are this server's.
        """
        payload = slash_command_payload(
            text,
            user_id=user_id,
            channel_id=channel_id,
            team_id=self.team_id,
            api_app_id=self.app_id,
            **fields,
        )
        return self.send_envelope(
            "slash_commands", dict(payload), accepts_response_payload=True, envelope_id=envelope_id
        )

    def send_block_action(
        self,
        action_id: str,
        value: str,
        user_id: str = "U1",
        channel_id: str = "C1",
        *,
        envelope_id: str | None = None,
        **fields: Any,
    ) -> str:
        """Send an ``interactive`` envelope carrying a button click; returns its envelope_id.

        ``fields`` are :func:`block_actions_payload`'s (``user_name``, ``response_url``,
        ``message_ts``...); the team, app and bot user are this server's.
        """
        payload = block_actions_payload(
            action_id,
            value,
            user_id=user_id,
            channel_id=channel_id,
            team_id=self.team_id,
            api_app_id=self.app_id,
            bot_user_id=self.bot_user_id,
            **fields,
        )
        return self.send_envelope(
            "interactive", payload, accepts_response_payload=False, envelope_id=envelope_id
        )

    def send_event(
        self,
        event: dict[str, Any],
        *,
        envelope_id: str | None = None,
        retry_attempt: int = 0,
    ) -> str:
        """Send an ``events_api`` envelope wrapping ``event`` (e.g. ``app_home_opened``)."""
        now = int(time.time())
        payload = {
            "token": DEFAULT_VERIFICATION_TOKEN,
            "team_id": self.team_id,
            "api_app_id": self.app_id,
            "event": {"event_ts": f"{time.time():.6f}", **event},
            "type": "event_callback",
            "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": now,
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }
        return self.send_envelope(
            "events_api",
            payload,
            envelope_id=envelope_id,
            extra={"retry_attempt": retry_attempt, "retry_reason": ""},
        )

    def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Ask the client to reconnect, as Slack does before rotating a connection."""
        self.send(
            {
                "type": "disconnect",
                "reason": reason,
                "debug_info": {"host": "fakeslack-127.0.0.1"},
            }
        )

    def ping(self, timeout: float = 5.0) -> float:
        """Ping the newest connection; the round-trip seconds (AssertionError if no pong)."""
        connection = self._latest(timeout)
        started = time.monotonic()
        pong = connection.ping()
        if not pong.wait(timeout):
            raise AssertionError(f"no pong within {timeout}s")
        return time.monotonic() - started

    def close_connections(self, code: int = 1001, reason: str = "going away") -> None:
        """Close every open connection from the server side.

        slack_sdk's built-in client does not reconnect on the close frame itself (it still counts
        as connected while handling it); its monitor reconnects on the next tick, up to
        ``ping_interval`` seconds later (bolt's SocketModeHandler: 10 s). For a quick reconnect
        use :meth:`send_disconnect`, which it handles at once.
        """
        with self._cond:
            connections = list(self._open)
        for connection in connections:
            connection.close(code, reason)
