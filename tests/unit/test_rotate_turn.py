"""The TURN credential check behind `/hq rotate turn-secret`: STUN encoding checked against the
RFC 5769 test vectors, and the Allocate exchange against a small TURN server in the test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from commands.infra import turn
from commands.infra.turn import (
    ALLOCATE,
    ERROR_CLASS,
    ERROR_CODE,
    NONCE,
    REALM,
    REFRESH,
    SUCCESS_CLASS,
    USERNAME,
    Turn,
    TurnError,
    decode,
    encode,
    fingerprint_ok,
    integrity_ok,
    long_term_key,
    parse_address,
    rest_credentials,
)

# RFC 5769 2.1: a sample request with a short-term credential (key = the password).
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e20746573"
    "7420636c69656e74002400046e0001ff80290008932ff9b151263b3600060009"
    "6576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249"
    "c1b571a280280004e57a3bcf"
)
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"


def test_the_rfc_5769_sample_request_checks_out() -> None:
    message = decode(RFC5769_REQUEST)
    assert message.type == 0x0001 and message.attrs[USERNAME] == b"evtj:h6vY"
    assert integrity_ok(message, RFC5769_PASSWORD)
    assert fingerprint_ok(message)
    assert not integrity_ok(message, b"another password")
    tampered = bytearray(RFC5769_REQUEST)
    tampered[40] ^= 1
    assert not integrity_ok(decode(bytes(tampered)), RFC5769_PASSWORD)
    assert not fingerprint_ok(decode(bytes(tampered)))


def test_encoded_messages_carry_a_valid_integrity_and_fingerprint() -> None:
    txid = bytes(range(12))
    raw = encode(ALLOCATE, txid, [(USERNAME, b"user"), (REALM, b"realm")], key=b"k")
    message = decode(raw)
    assert (message.type, message.txid) == (ALLOCATE, txid)
    assert message.attrs[USERNAME] == b"user" and message.attrs[REALM] == b"realm"
    assert integrity_ok(message, b"k") and fingerprint_ok(message)
    assert len(raw) % 4 == 0


def test_rest_credentials_are_the_turn_rest_api_ones() -> None:
    username, password = rest_credentials("s3cret", user="hq-bot", ttl=60, now=1000)
    assert username == "1060:hq-bot"
    digest = hmac.new(b"s3cret", b"1060:hq-bot", hashlib.sha1).digest()
    assert password == base64.b64encode(digest).decode()


def test_addresses_parse() -> None:
    assert parse_address("127.0.0.1:53478") == ("127.0.0.1", 53478)
    assert parse_address("turn.example.org") == ("turn.example.org", 3478)
    with pytest.raises(ValueError):
        parse_address("host:notaport")


class FakeTurn:
    """A TURN server that knows one static auth secret (use-auth-secret), over UDP."""

    REALM = b"fake.realm"

    def __init__(self, secret: str, stale_first: bool = False) -> None:
        self.secret = secret
        self.stale_first = stale_first
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.seen: list[int] = []
        self.nonce = b"nonce-1"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _error(self, msg_type: int, txid: bytes, code: int) -> bytes:
        value = struct.pack("!HBB", 0, code // 100, code % 100)
        attrs = [(ERROR_CODE, value), (REALM, self.REALM), (NONCE, self.nonce)]
        return encode(msg_type | ERROR_CLASS, txid, attrs)

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            message = decode(data)
            self.seen.append(message.type)
            method = message.type & 0x3EEF
            username = message.attrs.get(USERNAME)
            if username is None:
                self.sock.sendto(self._error(method, message.txid, 401), peer)
                continue
            if self.stale_first:
                self.stale_first = False
                self.nonce = b"nonce-2"
                self.sock.sendto(self._error(method, message.txid, 438), peer)
                continue
            digest = hmac.new(self.secret.encode(), username, hashlib.sha1).digest()
            password = base64.b64encode(digest).decode()
            key = long_term_key(username.decode(), self.REALM.decode(), password)
            if message.attrs.get(NONCE) != self.nonce or not integrity_ok(message, key):
                self.sock.sendto(self._error(method, message.txid, 401), peer)
                continue
            answer = encode(method | SUCCESS_CLASS, message.txid, [], key=key)
            self.sock.sendto(answer, peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[FakeTurn]:
    fake = FakeTurn("the-current-secret")
    yield fake
    fake.close()


def test_the_current_secret_is_accepted_and_the_allocation_released(server: FakeTurn) -> None:
    outcome = Turn("127.0.0.1", server.port, 2).check_secret("the-current-secret")
    assert outcome.accepted and "succeeded" in outcome.detail
    assert server.seen == [ALLOCATE, ALLOCATE, REFRESH]


def test_another_secret_gets_401(server: FakeTurn) -> None:
    outcome = Turn("127.0.0.1", server.port, 2).check_secret("an-old-secret")
    assert not outcome.accepted and "401" in outcome.detail
    assert "an-old-secret" not in outcome.detail


def test_a_stale_nonce_is_retried_once_with_the_new_nonce() -> None:
    fake = FakeTurn("s", stale_first=True)
    try:
        assert Turn("127.0.0.1", fake.port, 2).check_secret("s").accepted
    finally:
        fake.close()


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = int(silent.getsockname()[1])
        with pytest.raises(TurnError) as info:
            Turn("127.0.0.1", port, 0.6).check_secret("x")
    assert "did not answer within 0.6 s" in info.value.message


def test_an_unsigned_success_is_not_taken_as_proof(
    server: FakeTurn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn, "integrity_ok", lambda message, key: False)
    with pytest.raises(TurnError) as info:
        Turn("127.0.0.1", server.port, 2).check_secret("the-current-secret")
    assert "not proven" in info.value.message
