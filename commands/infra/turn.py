"""A TURN credential check: prove which shared secret coturn accepts.

coturn's ``use-auth-secret`` takes time-limited credentials (the "TURN REST API"): the user name
is ``EXPIRY:NAME`` and the password is ``base64(HMAC-SHA1(secret, username))``. An Allocate
request (RFC 5766) signed with them gets a success answer when coturn holds that secret and
``401 Unauthorized`` when it does not. The allocation is released at once (Refresh with lifetime
0). Only UDP on the configured address is used; no secret or password leaves this module.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import socket
import struct
import time
from dataclasses import dataclass

from commands.infra.gateway import InfraError

MAGIC_COOKIE = 0x2112A442
HEADER = struct.Struct("!HHI12s")
ALLOCATE, REFRESH = 0x0003, 0x0004
SUCCESS_CLASS, ERROR_CLASS = 0x0100, 0x0110
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE = 0x0006, 0x0008, 0x0009
LIFETIME, REALM, NONCE = 0x000D, 0x0014, 0x0015
REQUESTED_TRANSPORT, FINGERPRINT = 0x0019, 0x8028
FINGERPRINT_XOR = 0x5354554E
UDP_TRANSPORT = bytes((17, 0, 0, 0))


class TurnError(InfraError):
    """The TURN server did not answer, or answered something that is not TURN."""


@dataclass(frozen=True)
class Message:
    """A decoded STUN/TURN message: type, transaction id, attributes (first of each type) and
    where each starts in ``raw`` (for the integrity checks)."""

    type: int
    txid: bytes
    attrs: dict[int, bytes]
    raw: bytes = b""
    offsets: dict[int, int] | None = None

    @property
    def error_code(self) -> int | None:
        value = self.attrs.get(ERROR_CODE)
        if value is None or len(value) < 4:
            return None
        return (value[2] & 0x07) * 100 + value[3]


def rest_credentials(
    secret: str, user: str = "hq-bot", ttl: int = 300, now: float | None = None
) -> tuple[str, str]:
    """Given coturn's static auth secret, return (username, password) valid for ``ttl`` seconds,
    as the TURN REST API makes them."""
    expiry = int(time.time() if now is None else now) + ttl
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """Return the long-term credential key MD5(username:realm:password) (RFC 5389 15.4)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode(), usedforsecurity=False).digest()


def _attr(kind: int, value: bytes) -> bytes:
    padding = b"\x00" * (-len(value) % 4)
    return struct.pack("!HH", kind, len(value)) + value + padding


def encode(
    msg_type: int,
    txid: bytes,
    attrs: list[tuple[int, bytes]],
    *,
    key: bytes | None = None,
    fingerprint: bool = True,
) -> bytes:
    """Given a message type, a 12-byte transaction id and attributes, return the message, with
    MESSAGE-INTEGRITY (HMAC-SHA1 with ``key``) and FINGERPRINT appended when asked."""
    if len(txid) != 12:
        raise ValueError("a transaction id has 12 bytes")
    body = b"".join(_attr(kind, value) for kind, value in attrs)
    if key is not None:
        header = HEADER.pack(msg_type, len(body) + 24, MAGIC_COOKIE, txid)
        mac = hmac.new(key, header + body, hashlib.sha1).digest()
        body += _attr(MESSAGE_INTEGRITY, mac)
    if fingerprint:
        header = HEADER.pack(msg_type, len(body) + 8, MAGIC_COOKIE, txid)
        crc = (binascii.crc32(header + body) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        body += _attr(FINGERPRINT, struct.pack("!I", crc))
    return HEADER.pack(msg_type, len(body), MAGIC_COOKIE, txid) + body


def decode(data: bytes) -> Message:
    """Given a datagram, return the message. Raise TurnError when it is not STUN."""
    if len(data) < HEADER.size:
        raise TurnError("The TURN server answered with something too short to be STUN.")
    msg_type, length, cookie, txid = HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE or HEADER.size + length > len(data):
        raise TurnError("The TURN server answered with something that is not STUN.")
    attrs: dict[int, bytes] = {}
    offsets: dict[int, int] = {}
    offset = HEADER.size
    end = HEADER.size + length
    while offset + 4 <= end:
        kind, size = struct.unpack_from("!HH", data, offset)
        value = data[offset + 4 : offset + 4 + size]
        if kind not in attrs:
            attrs[kind], offsets[kind] = value, offset
        offset += 4 + size + (-size % 4)
    return Message(msg_type, txid, attrs, data[:end], offsets)


def integrity_ok(message: Message, key: bytes) -> bool:
    """Return True when the message's MESSAGE-INTEGRITY is the HMAC-SHA1 of what precedes it
    under ``key`` (so it was made by someone who holds the key)."""
    at = (message.offsets or {}).get(MESSAGE_INTEGRITY)
    if at is None or len(message.attrs[MESSAGE_INTEGRITY]) != 20:
        return False
    header = HEADER.pack(message.type, at - HEADER.size + 24, MAGIC_COOKIE, message.txid)
    mac = hmac.new(key, header + message.raw[HEADER.size : at], hashlib.sha1).digest()
    return hmac.compare_digest(mac, message.attrs[MESSAGE_INTEGRITY])


def fingerprint_ok(message: Message) -> bool:
    """Return True when the message's FINGERPRINT matches its CRC-32 (RFC 5389 15.5)."""
    at = (message.offsets or {}).get(FINGERPRINT)
    if at is None or len(message.attrs[FINGERPRINT]) != 4:
        return False
    header = HEADER.pack(message.type, at - HEADER.size + 8, MAGIC_COOKIE, message.txid)
    crc = (binascii.crc32(header + message.raw[HEADER.size : at]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return struct.pack("!I", crc) == message.attrs[FINGERPRINT]


@dataclass(frozen=True)
class CredentialCheck:
    """The answer to an authenticated Allocate: accepted (success) or refused (401)."""

    accepted: bool
    detail: str


class Turn:
    """Asks a TURN server over UDP whether it accepts credentials made from a secret."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _exchange(self, sock: socket.socket, request: bytes, txid: bytes) -> Message:
        """Send a request (again every third of the timeout, UDP may drop it) and return the
        answer with the same transaction id."""
        deadline = time.monotonic() + self.timeout
        for _ in range(3):
            sock.sendto(request, (self.host, self.port))
            wait_until = min(deadline, time.monotonic() + self.timeout / 3)
            while (left := wait_until - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    break
                except OSError as exc:
                    reason = exc.strerror or type(exc).__name__
                    raise TurnError(f"TURN at {self.address} is unreachable: {reason}.") from None
                message = decode(data)
                if message.txid == txid:
                    return message
        raise TurnError(f"TURN at {self.address} did not answer within {self.timeout:g} s.")

    def check_secret(self, secret: str) -> CredentialCheck:
        """Given a static auth secret, try an Allocate with credentials made from it; return
        whether the server accepted them. Raise TurnError when it does not answer as TURN."""
        username, password = rest_credentials(secret)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            txid = os.urandom(12)
            request = encode(ALLOCATE, txid, [(REQUESTED_TRANSPORT, UDP_TRANSPORT)])
            challenge = self._exchange(sock, request, txid)
            if challenge.type != ALLOCATE | ERROR_CLASS or challenge.error_code != 401:
                raise TurnError(
                    f"TURN at {self.address} did not ask for credentials "
                    f"(type {challenge.type:#06x}, error {challenge.error_code})."
                )
            realm = challenge.attrs.get(REALM, b"").decode("utf-8", errors="replace")
            nonce = challenge.attrs.get(NONCE, b"")
            key = long_term_key(username, realm, password)
            for _ in range(2):  # a 438 (stale nonce) gets one more try with the new nonce
                txid = os.urandom(12)
                auth = [
                    (REQUESTED_TRANSPORT, UDP_TRANSPORT),
                    (USERNAME, username.encode()),
                    (REALM, realm.encode()),
                    (NONCE, nonce),
                ]
                answer = self._exchange(sock, encode(ALLOCATE, txid, auth, key=key), txid)
                if answer.type == ALLOCATE | SUCCESS_CLASS:
                    if not integrity_ok(answer, key):
                        raise TurnError(
                            f"TURN at {self.address} accepted the Allocate without signing its "
                            "answer with the credentials: not proven."
                        )
                    self._release(sock, username, realm, answer.attrs.get(NONCE, nonce), key)
                    return CredentialCheck(True, f"an Allocate at {self.address} succeeded")
                code = answer.error_code
                if code == 438:
                    nonce = answer.attrs.get(NONCE, nonce)
                    continue
                if code == 401:
                    return CredentialCheck(False, f"{self.address} answered 401 Unauthorized")
                raise TurnError(f"TURN at {self.address} answered the Allocate with error {code}.")
        raise TurnError(f"TURN at {self.address} kept answering 438 Stale Nonce.")

    def _release(
        self, sock: socket.socket, username: str, realm: str, nonce: bytes, key: bytes
    ) -> None:
        """Free the allocation at once (Refresh, lifetime 0); a lost answer does not matter."""
        txid = os.urandom(12)
        attrs = [
            (LIFETIME, struct.pack("!I", 0)),
            (USERNAME, username.encode()),
            (REALM, realm.encode()),
            (NONCE, nonce),
        ]
        with contextlib.suppress(TurnError):
            self._exchange(sock, encode(REFRESH, txid, attrs, key=key), txid)


def parse_address(text: str, default_port: int = 3478) -> tuple[str, int]:
    """Given ``host:port`` (or a host), return (host, port). Raise ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)
