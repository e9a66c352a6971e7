"""A fake Slack Web API on 127.0.0.1 that records every call.

Point a client at it with ``WebClient(token=fake.token, base_url=fake.base_url)``. It accepts the
bodies exactly as ``slack_sdk.WebClient`` sends them: JSON (``chat.postMessage``,
``chat.update``, ``chat.postEphemeral``, ``views.*``), form-encoded (everything else, including the
"GET" methods, which slack_sdk's urllib client always POSTs), multipart (legacy file uploads), and
raw bytes to the upload URL ``files.getUploadURLExternal`` hands out.

Every request is recorded as a :class:`Call`; ``fail_next``/``error_next``/``delay_next`` inject
rate limits, API errors and slowness. Recorded method names are the Web API method names, plus
``"upload"`` for the upload URL and ``"response_url:<name>"`` for :meth:`FakeSlack.response_url`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ._base import Background, strings
from .socket_mode import FakeSocketMode

UPLOAD_METHOD = "upload"
RESPONSE_URL_PREFIX = "response_url:"

# Form fields slack_sdk serialises to a JSON string; decoded so tests see structures.
JSON_FIELDS = frozenset(
    {
        "attachments",
        "blocks",
        "files",
        "inputs",
        "metadata",
        "outputs",
        "unfurls",
        "user_auth_blocks",
        "view",
    }
)

# Methods that take the app-level (xapp-) token rather than the bot token.
APP_TOKEN_METHODS = frozenset({"apps.connections.open"})

ApiHandler = Callable[[dict[str, Any]], dict[str, Any]]


class SlackApiFault(Exception):
    """Raised by a method handler (built-in or registered with ``on``) to answer ok=false."""

    def __init__(self, error: str, status: int = 200, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.extra = extra


@dataclass(frozen=True)
class Call:
    """One request the fake received."""

    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    at: float
    status: int
    path: str = ""
    body: bytes = b""
    response: dict[str, Any] = field(default_factory=dict)
    # Bytes uploaded: for "upload" {file_id: bytes}; for files.completeUploadExternal the
    # content of every completed file {file_id: bytes}; for multipart API calls {field: bytes}.
    uploads: dict[str, bytes] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """A request header, case-insensitively."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    @property
    def token(self) -> str | None:
        auth = self.header("Authorization") or ""
        if auth.startswith("Bearer "):
            return auth[len("Bearer ") :]
        token = self.params.get("token")
        return token if isinstance(token, str) else None

    @property
    def ok(self) -> bool:
        """HTTP 200 and ``"ok": true``."""
        return self.status == 200 and self.response.get("ok") is True


@dataclass
class UploadedFile:
    """A file going through files.getUploadURLExternal -> upload URL -> completeUploadExternal."""

    file_id: str
    filename: str
    length: int
    content: bytes = b""
    uploaded: bool = False
    completed: bool = False
    title: str | None = None
    channel_id: str | None = None
    initial_comment: str | None = None
    thread_ts: str | None = None
    snippet_type: str | None = None
    alt_txt: str | None = None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


@dataclass(frozen=True)
class _Injection:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    parsed: dict[str, Any]


def _header_param(header: str, value: str, param: str) -> str | None:
    message = Message()
    message[header] = value
    got = message.get_param(param, header=header)
    if got is None or isinstance(got, str):
        return got
    return str(got[2])  # RFC 2231 (charset, language, value)


def _parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str | None, bytes]]:
    """(field name, filename, bytes) for every part of a multipart/form-data body."""
    boundary = _header_param("Content-Type", content_type, "boundary")
    if not boundary:
        return []
    parts: list[tuple[str, str | None, bytes]] = []
    for section in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if section.startswith(b"--"):
            break
        section = section.removeprefix(b"\r\n")
        head, _, data = section.partition(b"\r\n\r\n")
        data = data.removesuffix(b"\r\n")
        disposition = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition = value.strip()
        field_name = _header_param("Content-Disposition", disposition, "name") or ""
        filename = _header_param("Content-Disposition", disposition, "filename")
        parts.append((field_name, filename, data))
    return parts


def _decode_json_fields(params: dict[str, Any]) -> dict[str, Any]:
    for key in JSON_FIELDS & params.keys():
        value = params[key]
        if isinstance(value, str) and value[:1] in ("[", "{"):
            with contextlib.suppress(ValueError):
                params[key] = json.loads(value)
    return params


def _form(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, values in parse_qs(text, keep_blank_values=True).items():
        out[key] = values[0] if len(values) == 1 else values
    return out


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeSlack


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeSlack/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _serve(self, verb: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        fake = cast(_HttpServer, self.server).fake
        reply = fake._dispatch(verb, self.path, dict(self.headers.items()), body)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")


class FakeSlack(Background):
    """Fake Slack Web API server; use as a context manager or call ``start()``/``stop()``.

    ``users``: user id -> name, or -> dict of user fields (``name``, ``real_name``, ``is_bot``,
    ``deleted``, ``tz``, ``email``...). ``groups``: usergroup id -> member user ids. ``channels``:
    channel id -> name, or -> dict of channel fields. All three may be changed while running.
    With ``socket_mode=True`` a :class:`FakeSocketMode` is started alongside and
    ``apps.connections.open`` (authorised by ``app_token``) returns its URL.
    """

    def __init__(
        self,
        *,
        token: str = "xoxb-fake-bot-token",
        app_token: str | None = "xapp-fake-app-token",
        users: Mapping[str, str | Mapping[str, Any]] | None = None,
        groups: Mapping[str, Sequence[str]] | None = None,
        channels: Mapping[str, str | Mapping[str, Any]] | None = None,
        team_id: str = "T1",
        team_name: str = "Fake Team",
        bot_user_id: str = "UBOT",
        bot_name: str = "hq-bot",
        bot_id: str = "BBOT",
        app_id: str = "A1",
        socket_mode: bool = False,
        port: int = 0,
    ) -> None:
        self.token = token
        self.app_token = app_token
        self.users: dict[str, str | Mapping[str, Any]] = dict(
            users if users is not None else {"U1": "alice", "U2": "bob"}
        )
        self.groups: dict[str, list[str]] = {k: list(v) for k, v in (groups or {}).items()}
        self.channels: dict[str, str | Mapping[str, Any]] = dict(
            channels if channels is not None else {"C1": "general"}
        )
        self.team_id = team_id
        self.team_name = team_name
        self.bot_user_id = bot_user_id
        self.bot_name = bot_name
        self.bot_id = bot_id
        self.app_id = app_id
        self._port = port
        self._socket_mode = (
            FakeSocketMode(app_id=app_id, team_id=team_id, bot_user_id=bot_user_id)
            if socket_mode
            else None
        )

        self._cond = threading.Condition(threading.RLock())
        self._calls: list[Call] = []
        self._texts: list[str] = []
        self._failures: dict[str, deque[_Injection]] = {}
        self._delays: dict[str, deque[float]] = {}
        self._messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._files: dict[str, UploadedFile] = {}
        self._home_views: dict[str, dict[str, Any]] = {}
        self._ts_counter = itertools.count(1)
        self._id_counter = itertools.count(1)
        self._custom: dict[str, ApiHandler] = {}
        self._builtin: dict[str, ApiHandler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroups_users_list,
            "conversations.info": self._conversations_info,
            "views.publish": self._views_publish,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "apps.connections.open": self._apps_connections_open,
        }
        self._httpd: _HttpServer | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        if self._socket_mode is not None:
            self._socket_mode.start()
        httpd = _HttpServer(("127.0.0.1", self._port), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._run_in_background(httpd.serve_forever, "fakeslack-http", poll_interval=0.05)
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        self._join_background()
        if self._socket_mode is not None:
            self._socket_mode.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeSlack is not started")
        return int(self._httpd.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """Web API base URL for ``WebClient(base_url=...)`` (ends with ``/api/``)."""
        return f"{self.root_url}/api/"

    def response_url(self, name: str = "default") -> str:
        """A response_url served here; POSTs to it are recorded as ``response_url:<name>``."""
        return f"{self.root_url}/response_url/{quote(name, safe='')}"

    @property
    def socket_mode(self) -> FakeSocketMode:
        if self._socket_mode is None:
            raise RuntimeError("FakeSlack was created without socket_mode=True")
        return self._socket_mode

    # ------------------------------------------------------------------ test controls

    def on(self, method: str, handler: ApiHandler) -> None:
        """Serve ``method`` with ``handler(params) -> response`` (``ok`` defaults to true).

        The handler may raise :class:`SlackApiFault` to answer ``ok: false``. Overrides a
        built-in method too; the token is still checked.
        """
        with self._cond:
            self._custom[method] = handler

    def fail_next(
        self, method: str, status: int = 429, retry_after: int | None = 1, times: int = 1
    ) -> None:
        """Answer the next ``times`` calls to ``method`` with HTTP ``status``.

        429 carries ``Retry-After: retry_after`` and ``{"ok": false, "error": "ratelimited"}``.
        """
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        error = "ratelimited" if status == 429 else "fatal_error"
        injection = _Injection(status, {"ok": False, "error": error}, headers)
        with self._cond:
            self._failures.setdefault(method, deque()).extend([injection] * times)

    def error_next(
        self, method: str, error: str = "channel_not_found", times: int = 1, **extra: Any
    ) -> None:
        """Answer the next ``times`` calls to ``method``: 200 ``{"ok": false, "error": error}``."""
        injection = _Injection(200, {"ok": False, "error": error, **extra}, {})
        with self._cond:
            self._failures.setdefault(method, deque()).extend([injection] * times)

    def delay_next(self, method: str, seconds: float, times: int = 1) -> None:
        """Hold the answer to the next ``times`` calls to ``method`` for ``seconds``."""
        with self._cond:
            self._delays.setdefault(method, deque()).extend([seconds] * times)

    def reset(self) -> None:
        """Forget recorded calls, messages, files, views and pending injections."""
        with self._cond:
            self._calls.clear()
            self._texts.clear()
            self._failures.clear()
            self._delays.clear()
            self._messages.clear()
            self._files.clear()
            self._home_views.clear()
        if self._socket_mode is not None:
            self._socket_mode.reset()

    # ------------------------------------------------------------------ inspection

    @property
    def calls(self) -> list[Call]:
        with self._cond:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        with self._cond:
            return [c for c in self._calls if c.method == method]

    def methods(self) -> list[str]:
        with self._cond:
            return [c.method for c in self._calls]

    def wait_for(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        timeout: float = 5.0,
    ) -> Call:
        """The first recorded call to ``method`` matching ``predicate`` (waits for it).

        Failed calls (429s, injected errors) are recorded too; use ``lambda c: c.ok`` to skip them.
        Raises AssertionError listing what was recorded when nothing matches in time.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for call in self._calls:
                    if call.method == method and (predicate is None or predicate(call)):
                        return call
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [f"{c.method}({c.status})" for c in self._calls]
                    raise AssertionError(
                        f"no matching call to {method!r} within {timeout}s; recorded: {seen}"
                    )
                self._cond.wait(min(remaining, 0.05))

    def all_text(self) -> str:
        """Everything ever sent here as one string: raw bodies, decoded parameter values,
        uploaded bytes (decoded with errors='replace'), URLs, and Socket Mode client messages.
        Request headers are left out (they carry the bot token by design)."""
        with self._cond:
            text = "\n".join(self._texts)
        if self._socket_mode is not None:
            text += "\n" + self._socket_mode.all_text()
        return text

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Messages posted (with later chat.update edits applied), oldest first."""
        with self._cond:
            found = [dict(m) for (ch, _), m in self._messages.items() if channel in (None, ch)]
        return sorted(found, key=lambda m: m["ts"])

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        with self._cond:
            found = self._messages.get((channel, ts))
            return dict(found) if found is not None else None

    @property
    def uploaded_files(self) -> list[UploadedFile]:
        with self._cond:
            return list(self._files.values())

    def home_view(self, user_id: str) -> dict[str, Any] | None:
        """The App Home view last published for ``user_id``."""
        with self._cond:
            return self._home_views.get(user_id)

    # ------------------------------------------------------------------ request handling

    def _next_ts(self) -> str:
        micros = 1_700_000_000_000_000 + 100 * next(self._ts_counter)
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._id_counter):08d}"

    def _decode(
        self, method: str, headers: Mapping[str, str], query: str, body: bytes
    ) -> tuple[dict[str, Any], dict[str, bytes]]:
        content_type = ""
        for key, value in headers.items():
            if key.lower() == "content-type":
                content_type = value
        mime = content_type.split(";", 1)[0].strip().lower()
        params: dict[str, Any] = _form(query) if query else {}
        uploads: dict[str, bytes] = {}
        if method == UPLOAD_METHOD:
            # slack_sdk posts raw bytes here, and urllib labels them form-urlencoded.
            if mime == "multipart/form-data":
                parts = _parse_multipart(content_type, body)
                chosen = next((p for p in parts if p[1] is not None), parts[0] if parts else None)
                if chosen is not None:
                    uploads["content"] = chosen[2]
                    if chosen[1] is not None:
                        params["filename"] = chosen[1]
            else:
                uploads["content"] = body
            return params, uploads
        if not body:
            return params, uploads
        if mime == "application/json":
            try:
                parsed = json.loads(body.decode("utf-8"))
            except ValueError:
                params["_raw"] = body.decode("utf-8", "replace")
            else:
                if isinstance(parsed, dict):
                    params.update(parsed)
                else:
                    params["_json"] = parsed
        elif mime == "multipart/form-data":
            for name, filename, data in _parse_multipart(content_type, body):
                if filename is None:
                    params[name] = data.decode("utf-8", "replace")
                else:
                    params[name] = {"filename": filename, "size": len(data)}
                    uploads[name] = data
        else:
            params.update(_form(body.decode("utf-8", "replace")))
        return _decode_json_fields(params), uploads

    def _dispatch(self, verb: str, raw_path: str, headers: dict[str, str], body: bytes) -> _Reply:
        split = urlsplit(raw_path)
        path = split.path
        file_id = ""
        if path.startswith("/api/"):
            method = unquote(path[len("/api/") :])
        elif path.startswith("/upload/"):
            method = UPLOAD_METHOD
            file_id = unquote(path[len("/upload/") :])
        elif path.startswith("/response_url/"):
            method = RESPONSE_URL_PREFIX + unquote(path[len("/response_url/") :])
        else:
            method = f"unknown:{path}"
        params, uploads = self._decode(method, headers, split.query, body)

        with self._cond:
            self._texts.append(unquote(raw_path))
            self._texts.append(body.decode("utf-8", "replace"))
            self._texts.extend(strings(params))
            for data in uploads.values():
                self._texts.append(data.decode("utf-8", "replace"))
            delays = self._delays.get(method)
            delay = delays.popleft() if delays else 0.0

        if delay > 0:
            time.sleep(delay)

        with self._cond:
            failures = self._failures.get(method)
            injection = failures.popleft() if failures else None
            if injection is not None:
                status, response, extra_headers = (
                    injection.status,
                    dict(injection.body),
                    dict(injection.headers),
                )
            else:
                status, response, extra_headers = self._answer(
                    method, file_id, headers, params, uploads
                )
                if method == "files.completeUploadExternal" and status == 200:
                    uploads = {
                        f["id"]: self._files[f["id"]].content
                        for f in response.get("files", [])
                        if f.get("id") in self._files
                    }
                elif method == UPLOAD_METHOD and "content" in uploads:
                    uploads = {file_id: uploads["content"]}
            call = Call(
                method=method,
                params=params,
                headers=dict(headers),
                at=time.time(),
                status=status,
                path=raw_path,
                body=body,
                response=response,
                uploads=uploads,
            )
            self._calls.append(call)
            self._cond.notify_all()

        if method == UPLOAD_METHOD and status == 200:
            out = f"OK - {len(uploads.get(file_id, b''))}".encode()
            return _Reply(status, out, {"Content-Type": "text/plain", **extra_headers}, response)
        out = json.dumps(response).encode("utf-8")
        reply_headers = {"Content-Type": "application/json; charset=utf-8", **extra_headers}
        return _Reply(status, out, reply_headers, response)

    def _answer(
        self,
        method: str,
        file_id: str,
        headers: Mapping[str, str],
        params: dict[str, Any],
        uploads: dict[str, bytes],
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Called with the lock held. Returns (status, response body, extra headers)."""
        if method.startswith(RESPONSE_URL_PREFIX):
            return 200, {"ok": True}, {}
        if method == UPLOAD_METHOD:
            upload = self._files.get(file_id)
            if upload is None:
                return 404, {"ok": False, "error": "file_not_found"}, {}
            upload.content = uploads.get("content", b"")
            upload.uploaded = True
            return 200, {"ok": True}, {}
        if method.startswith("unknown:"):
            return 404, {"ok": False, "error": "not_found"}, {}

        handler = self._custom.get(method) or self._builtin.get(method)
        if handler is None:
            return 404, {"ok": False, "error": "unknown_method", "req_method": method}, {}
        auth_error = self._check_token(method, headers, params)
        if auth_error is not None:
            return 200, {"ok": False, "error": auth_error}, {}
        try:
            response = handler(params)
        except SlackApiFault as fault:
            return fault.status, {"ok": False, "error": fault.error, **fault.extra}, {}
        return 200, {"ok": True, **response}, {}

    def _check_token(
        self, method: str, headers: Mapping[str, str], params: dict[str, Any]
    ) -> str | None:
        token: str | None = None
        for key, value in headers.items():
            if key.lower() == "authorization" and value.startswith("Bearer "):
                token = value[len("Bearer ") :].strip()
        if token is None and isinstance(params.get("token"), str):
            token = params["token"]
        if not token:
            return "invalid_auth"
        if method in APP_TOKEN_METHODS:
            if self.app_token is not None and token == self.app_token:
                return None
            return "not_allowed_token_type" if token == self.token else "invalid_auth"
        if token == self.token:
            return None
        if self.app_token is not None and token == self.app_token:
            return "not_allowed_token_type"
        return "invalid_auth"

    # ------------------------------------------------------------------ built-in methods

    @staticmethod
    def _require(params: Mapping[str, Any], *names: str, error: str = "invalid_arguments") -> None:
        for name in names:
            if params.get(name) in (None, ""):
                raise SlackApiFault(error)

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake.slack.com/",
            "team": self.team_name,
            "user": self.bot_name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _message_fields(self, params: Mapping[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for key in ("text", "blocks", "attachments", "thread_ts", "metadata"):
            if params.get(key) not in (None, ""):
                fields[key] = params[key]
        return fields

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "channel", error="channel_not_found")
        fields = self._message_fields(params)
        if not any(k in fields for k in ("text", "blocks", "attachments")):
            raise SlackApiFault("no_text")
        channel = str(params["channel"])
        ts = self._next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "subtype": "bot_message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "ts": ts,
            "text": "",
            **fields,
        }
        self._messages[(channel, ts)] = {"channel": channel, **message}
        return {"channel": channel, "ts": ts, "message": message}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "channel", error="channel_not_found")
        self._require(params, "ts", error="message_not_found")
        channel, ts = str(params["channel"]), str(params["ts"])
        fields = self._message_fields(params)
        fields.pop("thread_ts", None)
        stored = self._messages.get((channel, ts))
        if stored is None:
            # Lenient: tests may click buttons on messages this fake never saw posted.
            stored = {"channel": channel, "type": "message", "user": self.bot_user_id, "ts": ts}
        stored.update(fields)
        stored["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        self._messages[(channel, ts)] = stored
        message = {k: v for k, v in stored.items() if k != "channel"}
        return {"channel": channel, "ts": ts, "text": stored.get("text", ""), "message": message}

    def _chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "channel", error="channel_not_found")
        self._require(params, "ts", error="message_not_found")
        channel, ts = str(params["channel"]), str(params["ts"])
        self._messages.pop((channel, ts), None)
        return {"channel": channel, "ts": ts}

    def _chat_post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "channel", error="channel_not_found")
        self._require(params, "user", error="user_not_in_channel")
        fields = self._message_fields(params)
        if not any(k in fields for k in ("text", "blocks", "attachments")):
            raise SlackApiFault("no_text")
        return {"message_ts": self._next_ts()}

    def _chat_get_permalink(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "channel", error="channel_not_found")
        self._require(params, "message_ts", error="message_not_found")
        channel, ts = str(params["channel"]), str(params["message_ts"])
        return {
            "channel": channel,
            "permalink": f"https://fake.slack.com/archives/{channel}/p{ts.replace('.', '')}",
        }

    def _files_get_upload_url(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "filename", "length")
        try:
            length = int(params["length"])
        except (TypeError, ValueError):
            raise SlackApiFault("invalid_arguments") from None
        file_id = self._next_id("F")
        self._files[file_id] = UploadedFile(
            file_id=file_id,
            filename=str(params["filename"]),
            length=length,
            snippet_type=params.get("snippet_type"),
            alt_txt=params.get("alt_txt"),
        )
        return {"upload_url": f"{self.root_url}/upload/{file_id}", "file_id": file_id}

    def _files_complete_upload(self, params: dict[str, Any]) -> dict[str, Any]:
        files = params.get("files")
        if not isinstance(files, list) or not files:
            raise SlackApiFault("invalid_arguments")
        channel_id = params.get("channel_id") or None
        channels = params.get("channels")
        if channel_id is None and isinstance(channels, str) and channels:
            channel_id = channels.split(",")[0]
        done: list[dict[str, Any]] = []
        for entry in files:
            upload = self._files.get(str(entry.get("id"))) if isinstance(entry, dict) else None
            if upload is None or not isinstance(entry, dict):
                raise SlackApiFault("file_not_found")
            if not upload.uploaded:
                raise SlackApiFault("file_upload_not_completed")
            upload.completed = True
            upload.title = entry.get("title") or upload.filename
            upload.channel_id = channel_id
            upload.initial_comment = params.get("initial_comment") or None
            upload.thread_ts = params.get("thread_ts") or None
            done.append(
                {
                    "id": upload.file_id,
                    "name": upload.filename,
                    "title": upload.title,
                    "size": len(upload.content),
                    "user": self.bot_user_id,
                    "channels": [channel_id] if channel_id else [],
                    "permalink": f"https://fake.slack.com/files/{self.bot_user_id}/"
                    f"{upload.file_id}/{quote(upload.filename)}",
                }
            )
        return {"files": done}

    def _user_object(self, user_id: str) -> dict[str, Any]:
        spec = self.users.get(user_id)
        if spec is None:
            raise SlackApiFault("user_not_found")
        extra: dict[str, Any] = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = str(extra.get("name", user_id.lower()))
        real_name = str(extra.get("real_name", name.title()))
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "real_name": real_name,
            "deleted": False,
            "is_bot": False,
            "is_admin": False,
            "tz": "Etc/UTC",
            "profile": {
                "real_name": real_name,
                "display_name": name,
                "email": extra.get("email", f"{name}@example.invalid"),
            },
        }
        user.update({k: v for k, v in extra.items() if k != "email"})
        return user

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "user", error="user_not_found")
        return {"user": self._user_object(str(params["user"]))}

    def _usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "usergroup", error="no_such_subteam")
        group = self.groups.get(str(params["usergroup"]))
        if group is None:
            raise SlackApiFault("no_such_subteam")
        return {"users": list(group)}

    def _conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "channel", error="channel_not_found")
        channel_id = str(params["channel"])
        spec = self.channels.get(channel_id)
        if spec is None:
            raise SlackApiFault("channel_not_found")
        extra: dict[str, Any] = {"name": spec} if isinstance(spec, str) else dict(spec)
        private = channel_id.startswith("G") or bool(extra.get("is_private"))
        channel: dict[str, Any] = {
            "id": channel_id,
            "name": str(extra.get("name", channel_id.lower())),
            "is_channel": not private,
            "is_group": private,
            "is_im": False,
            "is_private": private,
            "is_archived": False,
            "is_general": False,
            "is_member": True,
            "created": 1700000000,
            "creator": "U1",
        }
        channel.update(extra)
        return {"channel": channel}

    def _view(self, params: Mapping[str, Any], view_id: str | None = None) -> dict[str, Any]:
        view = params.get("view")
        if not isinstance(view, dict):
            raise SlackApiFault("invalid_arguments")
        return {
            "id": view_id or self._next_id("V"),
            "team_id": self.team_id,
            "app_id": self.app_id,
            "bot_id": self.bot_id,
            "hash": f"{time.time():.6f}.fakehash",
            **view,
        }

    def _views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "user_id", error="user_not_found")
        user_id = str(params["user_id"])
        previous = self._home_views.get(user_id)
        view = self._view(params, previous["id"] if previous else None)
        if view.get("type") != "home":
            raise SlackApiFault("invalid_arguments")
        self._home_views[user_id] = view
        return {"view": view}

    def _views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "trigger_id", error="invalid_trigger_id")
        return {"view": self._view(params)}

    def _views_update(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("view_id") and not params.get("external_id"):
            raise SlackApiFault("not_found")
        return {"view": self._view(params, params.get("view_id"))}

    def _apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._socket_mode is None:
            raise SlackApiFault("socket_mode_not_enabled")
        return {"url": self._socket_mode.new_url()}
