"""Harmoniq backend stand-in for the hq-bot sandbox (Python standard library HTTP server).

`GET /health` really connects to PostgreSQL and Redis on every call (short timeouts) and answers
  200 {"status": "ok", ...}        when both answer,
  503 {"status": "degraded", ...}  otherwise.
The JSON carries a fingerprint of JWT_SECRET (first 16 hex digits of its SHA-256) so a caller can
see which secret the running process has, never the secret itself. No secret value is printed
or returned: error details are scrubbed of every secret from the environment.

Settings (environment, from the deployment's .env through docker-compose.yml):
  DB_USER, DB_PASSWORD, DB_NAME, DB_HOST (127.0.0.1), DB_PORT (55432)
  REDIS_HOST (127.0.0.1), REDIS_PORT (56379), JWT_SECRET
  BACKEND_HOST (127.0.0.1), BACKEND_PORT (54000), APP_VERSION (optional)

Like a real backend it refuses to start with a weak signing key: a JWT_SECRET shorter than
MIN_JWT_SECRET characters makes it exit 2 at start (hq-bot's tests use this to make a rotation
fail in the middle).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import socketserver
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent
APP_NAME = "harmoniq-backend-sandbox"
CHECK_TIMEOUT_S = 2
HEALTHCHECK_AGENT = "hq-sandbox-healthcheck"
MIN_JWT_SECRET = 32
SECRET_NAMES = (
    "DB_PASSWORD",
    "JWT_SECRET",
    "MINIO_SECRET_KEY",
    "MINIO_ACCESS_KEY",
    "COTURN_SECRET",
)

STARTED_AT = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
INSTANCE_ID = uuid.uuid4().hex[:8]


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def scrub(text: str) -> str:
    """Remove every secret value (and the DSN) from an error message."""
    for name in SECRET_NAMES:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return " ".join(text.split())[:300]


def _read_git_head(repo: Path) -> str | None:
    git = repo / ".git"
    if git.is_file():  # worktree / submodule: "gitdir: PATH"
        line = git.read_text(encoding="utf-8").strip()
        if line.startswith("gitdir:"):
            git = (repo / line.split(":", 1)[1].strip()).resolve()
    head = git / "HEAD"
    if not head.is_file():
        return None
    ref = head.read_text(encoding="utf-8").strip()
    if not ref.startswith("ref:"):
        return ref[:40] or None
    name = ref.split(":", 1)[1].strip()
    loose = git / name
    if loose.is_file():
        return loose.read_text(encoding="utf-8").strip()[:40] or None
    packed = git / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == name:
                return parts[0][:40]
    return None


def app_version() -> str:
    """APP_VERSION, else the git commit of the app folder (or its parent), else VERSION."""
    if env("APP_VERSION"):
        return env("APP_VERSION")
    for repo in (APP_DIR, APP_DIR.parent):
        try:
            sha = _read_git_head(repo)
        except OSError:
            sha = None
        if sha:
            return sha
    version_file = APP_DIR / "VERSION"
    if version_file.is_file():
        return version_file.read_text(encoding="utf-8").strip() or "unknown"
    return "unknown"


VERSION = app_version()


def jwt_fingerprint() -> str:
    secret = env("JWT_SECRET")
    if not secret:
        return ""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


def check_postgres() -> dict[str, Any]:
    try:
        import psycopg2  # type: ignore[import-untyped]  # Debian python3-psycopg2

        conn = psycopg2.connect(
            host=env("DB_HOST", "127.0.0.1"),
            port=int(env("DB_PORT", "55432")),
            user=env("DB_USER"),
            password=env("DB_PASSWORD"),
            dbname=env("DB_NAME"),
            connect_timeout=CHECK_TIMEOUT_S,
            application_name=APP_NAME,
            options=f"-c statement_timeout={CHECK_TIMEOUT_S * 1000}",
        )
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_setting('server_version')")
                row = cur.fetchone()
            return {"ok": True, "detail": f"PostgreSQL {row[0] if row else '?'}"}
        finally:
            conn.close()
    except Exception as exc:  # report every failure as "not ok"
        return {"ok": False, "detail": scrub(f"{type(exc).__name__}: {exc}")}


def check_redis() -> dict[str, Any]:
    try:
        import redis  # Debian's python3-redis

        client = redis.Redis(
            host=env("REDIS_HOST", "127.0.0.1"),
            port=int(env("REDIS_PORT", "56379")),
            socket_timeout=CHECK_TIMEOUT_S,
            socket_connect_timeout=CHECK_TIMEOUT_S,
        )
        try:
            client.ping()
            info = client.info("server")
            return {"ok": True, "detail": f"Redis {info.get('redis_version', '?')}"}
        finally:
            client.close()
    except Exception as exc:
        return {"ok": False, "detail": scrub(f"{type(exc).__name__}: {exc}")}


def health() -> tuple[int, dict[str, Any]]:
    pg = check_postgres()
    rd = check_redis()
    ok = pg["ok"] and rd["ok"]
    body = {
        "status": "ok" if ok else "degraded",
        "postgres": pg,
        "redis": rd,
        "jwt_secret_fingerprint": jwt_fingerprint(),
        "version": VERSION,
        "started_at": STARTED_AT,
        "instance": INSTANCE_ID,
    }
    return (200 if ok else 503), body


class Handler(BaseHTTPRequestHandler):
    server_version = "harmoniq-sandbox"
    sys_version = ""

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/health", "/api/health"):
            status, body = health()
            self._send_json(status, body)
        elif path == "/":
            self._send_json(200, {"app": APP_NAME, "version": VERSION, "started_at": STARTED_AT})
        else:
            self._send_json(404, {"error": "not found"})

    do_HEAD = do_GET

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        # The container's own healthcheck (every 5 s) stays out of the log.
        if self.headers.get("User-Agent", "") != HEALTHCHECK_AGENT:
            super().log_request(code, size)

    def log_message(self, format: str, *args: Any) -> None:
        message = format % args
        sys.stderr.write(f"{self.log_date_time_string()} {self.address_string()} {message}\n")
        sys.stderr.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # SO_REUSEPORT: with host networking, `docker compose up --scale backend=N` can start N
    # processes on the same port; the kernel spreads connections across them.
    allow_reuse_port = True


def main() -> None:
    if len(env("JWT_SECRET")) < MIN_JWT_SECRET:
        sys.stderr.write(
            f"refusing to start: JWT_SECRET is shorter than {MIN_JWT_SECRET} characters\n"
        )
        sys.exit(2)
    host = env("BACKEND_HOST", "127.0.0.1")
    port = int(env("BACKEND_PORT", "54000"))
    if not hasattr(socketserver.TCPServer, "allow_reuse_port"):  # Python < 3.11
        Server.allow_reuse_address = True
    server = Server((host, port), Handler)

    def stop(signum: int, _frame: Any) -> None:
        sys.stderr.write(f"signal {signum}: shutting down\n")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stderr.write(
        f"{APP_NAME} {VERSION} instance {INSTANCE_ID} listening on http://{host}:{port} "
        f"(jwt fingerprint {jwt_fingerprint() or 'none'})\n"
    )
    sys.stderr.flush()
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
