"""Encryption at rest of backup files: AES-256-GCM in fixed-size chunks, streamed.

Format, version 1 (all integers big-endian)::

    header, 32 bytes:
      0   8  magic          b"HQBACKUP"
      8   1  version        1
      9   1  algorithm      1 = AES-256-GCM
     10   2  reserved       0
     12   4  chunk_size     plaintext bytes per chunk (4 KiB .. 16 MiB; 1 MiB when written)
     16   8  nonce_prefix   random, new for every file
     24   8  key_id         SHA-256(b"hq-bot backup key v1" + key)[:8], to tell a wrong key
                            from a damaged file
    then chunks 0, 1, 2, ... each: ciphertext || 16-byte GCM tag, where
      nonce = nonce_prefix || uint32(index)                                   (12 bytes)
      aad   = header || uint64(index) || uint8(final)
    Every chunk but the last holds exactly chunk_size plaintext bytes and has final = 0.
    The last chunk holds 0 .. chunk_size-1 bytes (an empty one when the data fills whole
    chunks) and has final = 1; nothing follows it.

What that buys: a flipped bit anywhere fails a tag (the header is in every chunk's AAD);
reordered or repeated chunks fail (the index is in the nonce and the AAD); a chunk taken from
another file fails (another nonce prefix and header); a file cut at a chunk boundary ends
without a final chunk, one cut inside a chunk fails its tag, and bytes after the final chunk
fail too (the chunk boundaries no longer line up). A reader never passes on plaintext it could
not authenticate (each chunk is released only after its tag checked), and it tells the caller
when the stream is not the whole file.

The key is 32 bytes (``HQ_BACKUP_KEY``, base64). Losing it loses every encrypted backup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Callable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from commands.spec import UserError

MAGIC = b"HQBACKUP"
VERSION = 1
ALGORITHM_AES_256_GCM = 1
HEADER = struct.Struct(">8sBBHI8s8s")
HEADER_SIZE = HEADER.size  # 32
TAG_SIZE = 16
KEY_SIZE = 32
CHUNK_SIZE = 1024 * 1024
MIN_CHUNK, MAX_CHUNK = 4 * 1024, 16 * 1024 * 1024
MAX_CHUNKS = 2**32
_KEY_ID_LABEL = b"hq-bot backup key v1"

Reader = Callable[[int], bytes]


class ArchiveError(UserError):
    """An encrypted backup cannot be read: wrong key, damaged, truncated or not ours."""


def parse_key(text: str) -> bytes:
    """Given ``HQ_BACKUP_KEY`` (base64 of 32 bytes), return the key. Raise ValueError (never
    quoting the value) when it is not that."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("HQ_BACKUP_KEY is not base64") from None
    if len(key) != KEY_SIZE:
        raise ValueError(f"HQ_BACKUP_KEY must be base64 of {KEY_SIZE} bytes, not {len(key)}")
    return key


def key_id(key: bytes) -> bytes:
    """Given a key, return its 8-byte identifier (a hash; it does not reveal the key)."""
    return hashlib.sha256(_KEY_ID_LABEL + key).digest()[:8]


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack(">QB", index, 1 if final else 0)


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= MAX_CHUNKS:
        raise ArchiveError("The backup is too large for one encrypted file (2^32 chunks).")
    return prefix + struct.pack(">I", index)


class Encryptor:
    """Streams plaintext into the format above. :meth:`update` returns the encrypted chunks
    that are complete (the header comes with the first call); :meth:`finish` returns the rest,
    ending with the final chunk."""

    def __init__(
        self, key: bytes, *, chunk_size: int = CHUNK_SIZE, nonce_prefix: bytes | None = None
    ) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("the key must be 32 bytes")
        if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise ValueError("chunk size out of range")
        self._aes = AESGCM(key)
        self.chunk_size = chunk_size
        self._prefix = nonce_prefix if nonce_prefix is not None else os.urandom(8)
        if len(self._prefix) != 8:
            raise ValueError("the nonce prefix must be 8 bytes")
        self.header = HEADER.pack(
            MAGIC, VERSION, ALGORITHM_AES_256_GCM, 0, chunk_size, self._prefix, key_id(key)
        )
        self._buffer = bytearray()
        self._index = 0
        self._started = False
        self._finished = False

    def _seal(self, data: bytes | memoryview, final: bool) -> bytes:
        index = self._index
        self._index += 1
        sealed: bytes = self._aes.encrypt(
            _nonce(self._prefix, index), data, _aad(self.header, index, final)
        )
        return sealed

    def update(self, data: bytes) -> list[bytes]:
        """Given more plaintext, return the encrypted bytes ready to write (maybe none)."""
        if self._finished:
            raise ValueError("update after finish")
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self.header)
        buffer, size = self._buffer, self.chunk_size
        # a chunk is sealed only when a byte past it exists: a full chunk is never the last
        if not buffer and len(data) > size:
            view = memoryview(data)
            start = 0
            while len(data) - start > size:
                out.append(self._seal(view[start : start + size], final=False))
                start += size
            buffer += view[start:]
            return out
        buffer += data
        if len(buffer) > size:
            view = memoryview(buffer)
            start = 0
            while len(buffer) - start > size:
                out.append(self._seal(view[start : start + size], final=False))
                start += size
            view.release()
            del buffer[:start]
        return out

    def finish(self) -> list[bytes]:
        """Return the remaining encrypted bytes: the last full chunk, if any, and the final
        (short, possibly empty) chunk."""
        if self._finished:
            raise ValueError("finish twice")
        self._finished = True
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self.header)
        buffer = self._buffer
        if len(buffer) == self.chunk_size:
            out.append(self._seal(bytes(buffer), final=False))
            buffer.clear()
        out.append(self._seal(bytes(buffer), final=True))
        buffer.clear()
        return out


def encrypt_bytes(key: bytes, data: bytes, *, chunk_size: int = CHUNK_SIZE) -> bytes:
    """Given a key and plaintext, return the whole encrypted file (for tests and small data)."""
    enc = Encryptor(key, chunk_size=chunk_size)
    return b"".join([*enc.update(data), *enc.finish()])


def _parse_header(header: bytes, key: bytes) -> tuple[int, bytes]:
    if len(header) < HEADER_SIZE or header[:8] != MAGIC:
        raise ArchiveError("This is not an hq-bot encrypted backup (its header is wrong).")
    _magic, version, algorithm, _reserved, chunk_size, prefix, kid = HEADER.unpack(header)
    if version != VERSION or algorithm != ALGORITHM_AES_256_GCM:
        raise ArchiveError(
            f"Unsupported encrypted backup format (version {version}, algorithm {algorithm})."
        )
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise ArchiveError("The encrypted backup's header is damaged (chunk size).")
    if kid != key_id(key):
        raise ArchiveError(
            "This backup was encrypted with a different key than HQ_BACKUP_KEY "
            f"(its key id is {kid.hex()}, ours is {key_id(key).hex()})."
        )
    return int(chunk_size), bytes(prefix)


class Decryptor:
    """Streams an encrypted file back to plaintext. :meth:`update` takes bytes as they come
    and returns the plaintext of every chunk that is known not to be the last (a full chunk
    followed by at least one more byte) and authenticated; :meth:`finish` checks and returns
    the final chunk. Raise ArchiveError on a wrong key, damage, reordering or truncation."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("the key must be 32 bytes")
        self._key = key
        self._aes = AESGCM(key)
        self._buffer = bytearray()
        self._header = b""
        self._prefix = b""
        self._full = 0
        self._index = 0
        self._finished = False

    def _open(self, sealed: bytes | memoryview, final: bool) -> bytes:
        index = self._index
        try:
            plain: bytes = self._aes.decrypt(
                _nonce(self._prefix, index), sealed, _aad(self._header, index, final)
            )
        except InvalidTag:
            what = "its last part" if final else f"chunk {index}"
            raise ArchiveError(
                f"The encrypted backup failed authentication at {what}: it is damaged, "
                "truncated or was tampered with."
            ) from None
        self._index += 1
        return plain

    def update(self, data: bytes | memoryview) -> list[bytes]:
        if self._finished:
            raise ValueError("update after finish")
        buffer = self._buffer
        buffer += data
        if not self._header:
            if len(buffer) < HEADER_SIZE:
                return []
            self._header = bytes(buffer[:HEADER_SIZE])
            chunk_size, self._prefix = _parse_header(self._header, self._key)
            self._full = chunk_size + TAG_SIZE
            del buffer[:HEADER_SIZE]
        out: list[bytes] = []
        full = self._full
        if len(buffer) > full:
            view = memoryview(buffer)
            start = 0
            while len(buffer) - start > full:
                out.append(self._open(view[start : start + full], final=False))
                start += full
            view.release()
            del buffer[:start]
        return out

    def finish(self) -> list[bytes]:
        """Return the plaintext of the rest. Raise ArchiveError when the data ends without
        its final chunk."""
        if self._finished:
            raise ValueError("finish twice")
        self._finished = True
        if not self._header:
            raise ArchiveError("This is not an hq-bot encrypted backup (it is too short).")
        buffer = self._buffer
        out: list[bytes] = []
        if len(buffer) == self._full:
            # a full chunk is never the last one: the final chunk that must follow is missing
            out.append(self._open(bytes(buffer), final=False))
            buffer.clear()
        if len(buffer) < TAG_SIZE:
            raise ArchiveError(
                f"The encrypted backup is truncated: it ends after {self._index} "
                f"chunk{'' if self._index == 1 else 's'} without its final chunk."
            )
        plain = self._open(bytes(buffer), final=True)
        buffer.clear()
        if plain:
            out.append(plain)
        return out


def decrypt_stream(read: Reader, key: bytes, block: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Given a reader of an encrypted file (``file.read``) and the key, yield the plaintext,
    each piece only after its tag checked. Raise ArchiveError on a wrong key, damage,
    reordering, truncation or trailing data."""
    decryptor = Decryptor(key)
    while data := read(block):
        yield from decryptor.update(data)
    yield from decryptor.finish()


def decrypt_bytes(key: bytes, data: bytes) -> bytes:
    """Given a key and a whole encrypted file, return its plaintext."""
    decryptor = Decryptor(key)
    return b"".join([*decryptor.update(data), *decryptor.finish()])


def plaintext_size(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Given the size of an encrypted file, return the size of its plaintext."""
    body = size - HEADER_SIZE
    chunks = body // (chunk_size + TAG_SIZE) + 1
    return body - chunks * TAG_SIZE
