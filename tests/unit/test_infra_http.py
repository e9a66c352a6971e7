from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from commands.infra.gateway import InfraError
from commands.infra.http import Http, HttpError
from commands.infra.prometheus import Prometheus
from commands.infra.tls import fetch_certificate
from tests.unit.infra_servers import http_server, self_signed, silent_server, tls_server


def test_get_returns_status_body_and_json() -> None:
    with http_server(lambda path: (200, {"path": path})) as url:
        resp = Http(timeout=5).get(url + "/health", params={"a": "b c"})
    assert resp.status == 200 and resp.json() == {"path": "/health?a=b+c"}


def test_an_error_status_is_returned_not_raised() -> None:
    with http_server(lambda path: (503, "down")) as url:
        resp = Http(timeout=5).get(url + "/x")
    assert resp.status == 503 and resp.body == b"down"
    with pytest.raises(HttpError, match="not JSON"):
        resp.json()


def test_a_server_that_never_answers_times_out_at_the_deadline() -> None:
    with silent_server() as port:
        started = time.monotonic()
        with pytest.raises(HttpError, match=r"did not answer within 0\.5 s"):
            Http().get(f"http://127.0.0.1:{port}/health", timeout=0.5)
        assert time.monotonic() - started < 2


@contextmanager
def trickle_server() -> Iterator[int]:
    """Answer with headers, then one body byte every 0.2 s for ever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        try:
            while True:
                conn.sendall(b"x")
                time.sleep(0.2)
        except OSError:
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_the_deadline_covers_the_whole_body_not_each_read() -> None:
    with trickle_server() as port:
        started = time.monotonic()
        with pytest.raises(HttpError, match="did not answer"):
            Http().get(f"http://127.0.0.1:{port}/", timeout=1.0)
        assert time.monotonic() - started < 3


def test_a_closed_port_is_unreachable() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(HttpError, match="unreachable"):
        Http().get(f"http://127.0.0.1:{port}/", timeout=2)


def test_tls_expiry_is_read_from_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key, not_after = self_signed(tmp_path, days=10)
    with tls_server(cert, key) as port:
        found = fetch_certificate(f"127.0.0.1:{port}", timeout=5)
    assert found.not_after == not_after and found.not_after.tzinfo == dt.UTC
    assert "localhost" in found.subject


def test_tls_of_a_silent_port_times_out() -> None:
    with silent_server() as port, pytest.raises(InfraError, match="did not answer"):
        fetch_certificate(f"127.0.0.1:{port}", timeout=0.5)


def _prometheus(answers: dict[str, Any]) -> Any:
    def handle(path: str) -> tuple[int, Any]:
        for key, body in answers.items():
            if key in path:
                return 200, body
        return 400, {"status": "error", "error": "bad query"}

    return http_server(handle)


def test_prometheus_vector_and_scalar_answers_are_summed() -> None:
    vector = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"pod": "a"}, "value": [1, "3"]},
                {"metric": {"pod": "b"}, "value": [1, "4"]},
            ],
        },
    }
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1, "0.25"]}}
    empty = {"status": "success", "data": {"resultType": "vector", "result": []}}
    nan = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "NaN"]}]},
    }
    with _prometheus({"vec": vector, "sca": scalar, "emp": empty, "nan": nan}) as url:
        prom = Prometheus(url, Http(), timeout=5)
        assert prom.scalar("vec") == 7
        assert prom.scalar("sca") == 0.25
        assert prom.scalar("emp") is None
        assert prom.scalar("nan") is None
        with pytest.raises(InfraError, match="refused the query"):
            prom.scalar("other")
