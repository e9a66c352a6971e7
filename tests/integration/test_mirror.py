"""``/hq minio backup`` end to end through the console door against the sandbox's S3 stand-in
(moto in server mode on 127.0.0.1:59000, with the deployment's keys enforced).

Each test mirrors a bucket of its own (``hq-test-mirror-<random>``, set as HQ_S3_BUCKET), so the
real ``harmoniq-uploads`` bucket that other tests use is never touched; the bucket is emptied
and removed afterwards.

What moto cannot prove, compared with a real MinIO:
* ETags: moto computes single-part ETags as the MD5 and multipart ones as
  ``md5(part md5s)-N``, like AWS; MinIO does the same without encryption, but with SSE (KMS,
  auto-encryption) MinIO's ETags are not MD5s. The mirror then relies on the
  ``x-amz-server-side-encryption`` response header to skip the MD5 check; moto never sets it,
  so that branch is only covered by reasoning, not by this test.
* Server-side copy: moto copies any size in one CopyObject; MinIO (and S3) refuse a single
  CopyObject above 5 GiB, where the minio SDK switches to a multipart copy (UploadPartCopy)
  whose result has a multipart ETag. Not exercised here (no 5 GiB object in memory).
* Conditional copy: the mirror's server-side copy sends ``x-amz-copy-source-if-match`` with the
  listed ETag, so a source replaced meanwhile is refused (412) by MinIO and S3. moto ignores
  that header and copies whatever is there (checked by hand: no 412), so the guard is not
  tested here; the GET's ``If-Match`` is (moto honours it).
* Auth: the sandbox registers the ``.env`` key pair with moto's IAM (``s3:*``); MinIO policies,
  per-bucket policies and STS are not modelled. Pagination is moto's (1000 keys a page), the
  same contract as MinIO's ListObjectsV2, but MinIO's listing order for unusual keys and its
  refusal of some key shapes (MinIO rejects keys with ``..`` segments at upload) differ:
  moto stores ``../../etc/x`` as given, which is why the escape test can run at all.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from minio import Minio

from approvals.db import make_engine
from commands.infra.envfile import EnvFile
from commands.infra.mirror import MANIFEST_NAME
from commands.minio_backup import MirrorRuns
from tests.integration.conftest import DEPLOY_DIR, run_console

pytestmark = pytest.mark.integration
ENDPOINT = "127.0.0.1:59000"


def _keys() -> tuple[str, str]:
    env = EnvFile(DEPLOY_DIR / ".env").read()
    return env["MINIO_ACCESS_KEY"], env["MINIO_SECRET_KEY"]


def _client() -> Minio:
    access, secret = _keys()
    return Minio(ENDPOINT, access_key=access, secret_key=secret, secure=False)


def _boto() -> Any:
    """boto3 sends keys the minio SDK refuses client-side (``..`` segments)."""
    access, secret = _keys()
    return boto3.client(
        "s3",
        endpoint_url=f"http://{ENDPOINT}",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )


def _drop(name: str) -> None:
    s3 = _boto()
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=name)
        for page in pages:
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=name, Key=obj["Key"])
        s3.delete_bucket(Bucket=name)
    except s3.exceptions.NoSuchBucket:
        pass


@pytest.fixture
def bucket(sandbox: None) -> Iterator[str]:
    """A fresh bucket of this test's own, removed with its objects afterwards."""
    name = f"hq-test-mirror-{uuid.uuid4().hex[:10]}"
    _client().make_bucket(name)
    try:
        yield name
    finally:
        _drop(name)


def _put(client: Minio, bucket: str, key: str, data: bytes, part_size: int = 0) -> None:
    client.put_object(bucket, key, io.BytesIO(data), len(data), part_size=part_size)


def _assert_folder_equals_bucket(client: Minio, bucket: str, folder: Path) -> None:
    """Byte for byte: every object has a file with the same content, and no file is extra."""
    expected = {}
    for obj in client.list_objects(bucket, recursive=True):
        response = client.get_object(bucket, obj.object_name)
        try:
            expected[obj.object_name] = response.read()
        finally:
            response.close()
            response.release_conn()
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.name.startswith(".hq-mirror"):
            found[path.relative_to(folder).as_posix()] = path.read_bytes()
    assert found.keys() == expected.keys()
    for key, data in expected.items():
        assert found[key] == data, key


def test_mirror_copies_then_skips_then_copies_only_the_changed_object(
    make_bot: Any, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client()
    folder = tmp_path / "minio"
    objects = {
        "avatars/alice.png": os.urandom(2048),
        "avatars/bob.png": os.urandom(10),
        "rooms/42/upload 1.bin": os.urandom(70_000),
        "rooms/42/\u00e9t\u00e9.txt": "été".encode(),
        "empty": b"",
    }
    for key, data in objects.items():
        _put(client, bucket, key, data)
    big = os.urandom(6 * 1024 * 1024 + 5)  # multipart: ETag "...-2", MD5 check not possible
    _put(client, bucket, "videos/big.mp4", big, part_size=5 * 1024 * 1024)
    bot = make_bot(hq_s3_bucket=bucket, hq_minio_backup_dir=str(folder))

    code, out = run_console(bot, "/hq minio backup")
    assert code == 0, out
    assert "[OK] MinIO backup #1 verified: 6 copied, 0 unchanged, 0 failed" in out, out
    assert "OK      check: object count: the folder holds 6 of the bucket's 6 object(s)" in out
    assert "6 of 6 copied file(s) read back with the SHA-256" in out
    _assert_folder_equals_bucket(client, bucket, folder)
    manifest = (folder / MANIFEST_NAME).read_text()
    assert hashlib.sha256(big).hexdigest() in manifest and '-2"' in manifest

    code, out = run_console(bot, "/hq minio backup")
    assert code == 0, out
    assert "[OK] MinIO backup #2 verified: 0 copied, 6 unchanged, 0 failed, 0 B" in out, out

    _put(client, bucket, "avatars/bob.png", b"a new avatar")
    client.remove_object(bucket, "empty")
    code, out = run_console(bot, "/hq minio backup")
    assert code == 0, out
    assert "[OK] MinIO backup #3 verified: 1 copied, 4 unchanged, 0 failed" in out, out
    assert "copied: 1 object(s), 12 B: avatars/bob.png" in out
    assert "WARN    deleted in the bucket: 1 object(s) gone from the bucket; their copies" in out
    assert (folder / "avatars" / "bob.png").read_bytes() == b"a new avatar"
    assert (folder / "empty").read_bytes() == b""  # kept, like mc mirror without --remove
    (folder / "empty").unlink()
    _assert_folder_equals_bucket(client, bucket, folder)

    code, out = run_console(bot, "/hq minio backups")
    assert code == 0, out
    assert "3 MinIO mirror run(s)" in out
    assert out.index("#3 ") < out.index("#2 ") < out.index("#1 ")
    assert "succeeded; 1 copied, 4 unchanged, 0 failed, 1 deleted in bucket" in out
    for secret in _keys():  # neither key reaches the console or the log
        assert secret not in out and secret not in caplog.text
    runs = MirrorRuns(make_engine(bot.settings.hq_database_url)).recent(3)
    assert [(r.copied, r.skipped, r.verified) for r in runs] == [
        (1, 4, True),
        (0, 6, True),
        (6, 0, True),
    ]


def test_keys_that_would_escape_the_folder_are_refused(
    make_bot: Any, bucket: str, tmp_path: Path
) -> None:
    s3 = _boto()
    hostile = ["../../etc/x", "../outside.txt", "/abs/path", "a/../../b"]
    for key in hostile:
        s3.put_object(Bucket=bucket, Key=key, Body=b"evil")
    s3.put_object(Bucket=bucket, Key="fine.txt", Body=b"fine")
    jail = tmp_path / "jail"  # ../../etc/x from jail/deep/minio would land in jail/etc/x
    folder = jail / "deep" / "minio"
    bot = make_bot(hq_s3_bucket=bucket, hq_minio_backup_dir=str(folder))

    code, out = run_console(bot, "/hq minio backup")
    assert code == 1, out
    assert "[FAILED] MinIO backup #1 NOT verified: 1 copied, 0 unchanged, 4 failed" in out
    assert "../../etc/x (unsafe key: has a '..' path part)" in out
    assert "/abs/path (unsafe key: absolute path)" in out
    assert "FAIL    check: object count: the folder holds 1 of the bucket's 5 object(s)" in out
    files = {p.relative_to(jail).as_posix() for p in jail.rglob("*") if not p.is_dir()}
    assert files == {
        "deep/minio/fine.txt",
        f"deep/minio/{MANIFEST_NAME}",
        "deep/minio/.hq-mirror.lock",
    }
    assert (folder / "fine.txt").read_bytes() == b"fine"


def test_the_mirror_bucket_gets_server_side_copies(
    make_bot: Any, bucket: str, tmp_path: Path
) -> None:
    client = _client()
    mirror = f"{bucket}-m"
    client.make_bucket(mirror)
    try:
        _put(client, bucket, "a.txt", b"alpha")
        _put(client, bucket, "b/c.txt", b"charlie")
        bot = make_bot(
            hq_s3_bucket=bucket,
            hq_minio_backup_dir=str(tmp_path / "minio"),
            hq_minio_mirror_bucket=mirror,
        )
        code, out = run_console(bot, "/hq minio backup")
        assert code == 0, out
        assert f"OK      bucket {mirror}: 2 copied server-side, 0 unchanged, 0 failed" in out
        assert f"bucket {mirror} holds 2 of the 2 object(s) with the same size" in out
        _assert_folder_equals_bucket(client, mirror, tmp_path / "minio")

        code, out = run_console(bot, "/hq minio backup")
        assert code == 0 and f"bucket {mirror}: 0 copied server-side, 2 unchanged" in out, out

        _put(client, bucket, "a.txt", b"ALPHA!")
        code, out = run_console(bot, "/hq minio backup")
        assert f"bucket {mirror}: 1 copied server-side, 1 unchanged" in out, out
        response = client.get_object(mirror, "a.txt")
        try:
            assert response.read() == b"ALPHA!"
        finally:
            response.close()
            response.release_conn()
    finally:
        _drop(mirror)


def test_an_object_replaced_between_listing_and_download_is_not_mixed_up(
    bucket: str, tmp_path: Path
) -> None:
    """The GET carries If-Match with the listed ETag: a newer version is refused (412), never
    written under the old listing's size and ETag."""
    from commands.infra.mirror import Listed, MinioStore, fetch

    client = _client()
    _put(client, bucket, "a", b"old")
    store = MinioStore(client)
    (listed,) = list(store.list(bucket))
    _put(client, bucket, "a", b"new!")
    with pytest.raises(Exception) as info:
        fetch(store, bucket, listed, tmp_path / "a")
    assert getattr(info.value, "code", "") == "PreconditionFailed"
    assert list(tmp_path.iterdir()) == []
    current = Listed("a", 4, next(iter(store.list(bucket))).etag, "")
    assert fetch(store, bucket, current, tmp_path / "a").size == 4
    assert (tmp_path / "a").read_bytes() == b"new!"
