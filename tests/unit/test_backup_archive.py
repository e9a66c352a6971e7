"""The encrypted backup format (commands.infra.archive): round trips, and every way a file can be
damaged (truncation, reordering, chunk swapping, bit flips, trailing bytes, a wrong key)."""

from __future__ import annotations

import base64
import io
import os
import struct

import pytest

from commands.infra import archive
from commands.infra.archive import (
    HEADER_SIZE,
    TAG_SIZE,
    ArchiveError,
    Decryptor,
    Encryptor,
    decrypt_bytes,
    decrypt_stream,
    encrypt_bytes,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CHUNK = 4096
FULL = CHUNK + TAG_SIZE


def _enc(data: bytes, key: bytes = KEY) -> bytes:
    return encrypt_bytes(key, data, chunk_size=CHUNK)


def _chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Split an encrypted file into its header and its chunks (the last one short)."""
    header, body = blob[:HEADER_SIZE], blob[HEADER_SIZE:]
    return header, [body[i : i + FULL] for i in range(0, len(body), FULL)]


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17, 100_000]
)
def test_round_trip_at_every_chunk_boundary(size: int) -> None:
    data = os.urandom(size)
    blob = _enc(data)
    assert decrypt_bytes(KEY, blob) == data
    assert b"".join(decrypt_stream(io.BytesIO(blob).read, KEY, block=1000)) == data
    assert archive.plaintext_size(len(blob), CHUNK) == size


def test_the_file_is_a_header_full_chunks_and_one_short_final_chunk() -> None:
    blob = _enc(b"x" * (2 * CHUNK))  # fills two chunks exactly: an empty final chunk follows
    header, chunks = _chunks(blob)
    assert [len(c) for c in chunks] == [FULL, FULL, TAG_SIZE]
    magic, version, algorithm, reserved, chunk_size, prefix, kid = archive.HEADER.unpack(header)
    assert (magic, version, algorithm, reserved, chunk_size) == (b"HQBACKUP", 1, 1, 0, CHUNK)
    assert kid == archive.key_id(KEY) and len(prefix) == 8


def test_streaming_in_odd_pieces_gives_a_file_that_decrypts_the_same() -> None:
    data = os.urandom(5 * CHUNK + 123)
    enc = Encryptor(KEY, chunk_size=CHUNK)
    out: list[bytes] = []
    for start in range(0, len(data), 777):
        out += enc.update(data[start : start + 777])
    out += enc.finish()
    blob = b"".join(out)
    dec = Decryptor(KEY)
    plain: list[bytes] = []
    for start in range(0, len(blob), 333):
        plain += dec.update(blob[start : start + 333])
    plain += dec.finish()
    assert b"".join(plain) == data


def test_each_file_gets_its_own_nonce_prefix() -> None:
    assert _enc(b"same")[16:24] != _enc(b"same")[16:24]
    assert _enc(b"same") != _enc(b"same")


def test_a_file_cut_at_a_chunk_boundary_is_truncated() -> None:
    blob = _enc(os.urandom(3 * CHUNK + 10))
    cut = blob[: HEADER_SIZE + 2 * FULL]
    with pytest.raises(ArchiveError, match="truncated: it ends after 2 chunks without its final"):
        decrypt_bytes(KEY, cut)


def test_a_file_cut_just_after_a_full_chunk_is_truncated_too() -> None:
    blob = _enc(os.urandom(2 * CHUNK + 10))
    with pytest.raises(ArchiveError, match="truncated"):
        decrypt_bytes(KEY, blob[: HEADER_SIZE + FULL])


def test_a_file_cut_inside_a_chunk_fails_authentication() -> None:
    blob = _enc(os.urandom(3 * CHUNK))
    with pytest.raises(ArchiveError, match="failed authentication"):
        decrypt_bytes(KEY, blob[: HEADER_SIZE + FULL + 100])


def test_a_file_cut_inside_the_header_or_empty_is_not_ours() -> None:
    blob = _enc(b"data")
    with pytest.raises(ArchiveError, match="too short"):
        decrypt_bytes(KEY, blob[:20])
    with pytest.raises(ArchiveError, match="too short"):
        decrypt_bytes(KEY, b"")


def test_the_header_alone_is_truncated() -> None:
    with pytest.raises(ArchiveError, match="truncated: it ends after 0 chunks"):
        decrypt_bytes(KEY, _enc(b"data")[:HEADER_SIZE])


def test_reordered_chunks_fail_authentication() -> None:
    header, chunks = _chunks(_enc(os.urandom(3 * CHUNK + 5)))
    swapped = header + chunks[1] + chunks[0] + b"".join(chunks[2:])
    with pytest.raises(ArchiveError, match="failed authentication at chunk 0"):
        decrypt_bytes(KEY, swapped)


def test_a_repeated_chunk_fails_authentication() -> None:
    header, chunks = _chunks(_enc(os.urandom(3 * CHUNK + 5)))
    repeated = header + chunks[0] + chunks[0] + b"".join(chunks[2:])
    with pytest.raises(ArchiveError, match="failed authentication at chunk 1"):
        decrypt_bytes(KEY, repeated)


def test_a_chunk_from_another_file_fails_authentication() -> None:
    header, chunks = _chunks(_enc(os.urandom(2 * CHUNK + 5)))
    _other_header, others = _chunks(_enc(os.urandom(2 * CHUNK + 5)))
    mixed = header + chunks[0] + others[1] + chunks[2]
    with pytest.raises(ArchiveError, match="failed authentication at chunk 1"):
        decrypt_bytes(KEY, mixed)


@pytest.mark.parametrize("where", [0, 9, 13, 20, 30, HEADER_SIZE, HEADER_SIZE + 4000, -1, -20])
def test_a_flipped_bit_anywhere_is_detected(where: int) -> None:
    blob = bytearray(_enc(os.urandom(2 * CHUNK + 100)))
    blob[where] ^= 0x01
    with pytest.raises(ArchiveError):
        decrypt_bytes(KEY, bytes(blob))


def test_bytes_after_the_final_chunk_are_refused() -> None:
    blob = _enc(os.urandom(CHUNK + 10))
    with pytest.raises(ArchiveError):
        decrypt_bytes(KEY, blob + b"\x00")
    with pytest.raises(ArchiveError):
        decrypt_bytes(KEY, blob + os.urandom(FULL + 1))


def test_a_wrong_key_is_named_as_such() -> None:
    with pytest.raises(ArchiveError, match="different key than HQ_BACKUP_KEY"):
        decrypt_bytes(OTHER_KEY, _enc(b"secret dump"))


def test_a_plain_dump_is_not_taken_for_an_encrypted_one() -> None:
    with pytest.raises(ArchiveError, match="not an hq-bot encrypted backup"):
        decrypt_bytes(KEY, b"PGDMP" + os.urandom(100))


def test_an_unknown_version_is_refused() -> None:
    blob = bytearray(_enc(b"data"))
    blob[8] = 2
    with pytest.raises(ArchiveError, match="Unsupported encrypted backup format"):
        decrypt_bytes(KEY, bytes(blob))


def test_no_unauthenticated_plaintext_is_released() -> None:
    data = os.urandom(4 * CHUNK + 7)
    blob = bytearray(_enc(data))
    blob[HEADER_SIZE + 2 * FULL + 5] ^= 0x80  # damage chunk 2
    released: list[bytes] = []
    with pytest.raises(ArchiveError, match="chunk 2"):
        for piece in decrypt_stream(io.BytesIO(bytes(blob)).read, KEY, block=FULL):
            released.append(piece)
    assert b"".join(released) == data[: 2 * CHUNK]


def test_the_nonce_is_the_prefix_and_the_chunk_index() -> None:
    prefix = b"\x01" * 8
    enc = Encryptor(KEY, chunk_size=CHUNK, nonce_prefix=prefix)
    blob = b"".join([*enc.update(b"a" * (CHUNK + 1)), *enc.finish()])
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header, chunks = _chunks(blob)
    aad = header + struct.pack(">QB", 1, 1)
    assert AESGCM(KEY).decrypt(prefix + struct.pack(">I", 1), chunks[1], aad) == b"a"


def test_parse_key_wants_base64_of_32_bytes_and_never_echoes_it() -> None:
    assert archive.parse_key(base64.b64encode(KEY).decode()) == KEY
    with pytest.raises(ValueError, match="not base64") as info:
        archive.parse_key("not-base64!")
    assert "not-base64!" not in str(info.value)
    with pytest.raises(ValueError, match="32 bytes, not 16"):
        archive.parse_key(base64.b64encode(bytes(16)).decode())


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        Encryptor(bytes(16))
    with pytest.raises(ValueError):
        Encryptor(KEY, chunk_size=100)
    enc = Encryptor(KEY, chunk_size=CHUNK)
    enc.finish()
    with pytest.raises(ValueError):
        enc.update(b"late")
