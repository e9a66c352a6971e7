"""Tiny local servers for client tests: a silent TCP listener, a scripted HTTP server and a
TLS server with a self-signed certificate. All bind 127.0.0.1 on a free port."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@contextmanager
def _accepting(backlog: int, on_accept: Callable[[socket.socket], None]) -> Iterator[int]:
    """Listen on 127.0.0.1 and hand every accepted connection to ``on_accept`` in a background
    thread; yield the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            on_accept(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        listener.close()


@contextmanager
def silent_server() -> Iterator[int]:
    """Accept connections and never answer; yield the port."""
    held: list[socket.socket] = []
    try:
        with _accepting(16, held.append) as port:
            yield port
    finally:
        for conn in held:
            conn.close()


Handler = Callable[[str], tuple[int, Any]]


@contextmanager
def http_server(handle: Handler) -> Iterator[str]:
    """Serve GET: ``handle(path)`` returns (status, body: bytes, str or JSON-able). Yield the
    base URL."""

    class _H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = handle(self.path)
            if isinstance(body, bytes):
                data = body
            elif isinstance(body, str):
                data = body.encode()
            else:
                data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_HEAD(self) -> None:
            status, _ = handle(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def self_signed(tmp: Path, days: int) -> tuple[Path, Path, dt.datetime]:
    """Write a self-signed certificate for localhost valid ``days`` from now; return the cert
    and key paths and its expiry."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    not_after = (now + dt.timedelta(days=days)).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"cert-{days}.pem", tmp / f"key-{days}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, not_after


@contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[int]:
    """Complete TLS handshakes with the given certificate; yield the port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def handshake(conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    with _accepting(8, handshake) as port:
        yield port
