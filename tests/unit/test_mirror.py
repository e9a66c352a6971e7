"""The mirror engine (commands.infra.mirror) with a hand-written fake store: key -> path safety,
the manifest, skip decisions, failures that leave nothing behind, and verification."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from commands.infra import mirror
from commands.infra.gateway import InfraError
from commands.infra.mirror import (
    MANIFEST_NAME,
    Body,
    Entry,
    Listed,
    Manifest,
    ManifestError,
    Mirror,
    MirrorJob,
    UnsafeKey,
    copy_reason,
    display_key,
    key_to_relpath,
    prepare_parent,
)

LM = "2025-01-15T10:00:00+00:00"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class FakeStore:
    """Buckets in memory. Records reads and copies; can fail a read half-way, serve other bytes
    than it lists, or report a multipart ETag."""

    def __init__(self, **buckets: dict[str, bytes]) -> None:
        self.buckets = {name.replace("_", "-"): dict(objs) for name, objs in buckets.items()}
        self.etags: dict[str, str] = {}  # key -> ETag to list instead of the MD5
        self.reads: list[str] = []
        self.copies: list[str] = []
        self.break_after: dict[str, int] = {}  # key -> bytes served before the connection drops
        self.serve: dict[str, bytes] = {}  # key -> bytes served instead of the real ones
        self.pages: list[int] = []

    def exists(self, bucket: str) -> bool:
        return bucket in self.buckets

    def etag(self, bucket: str, key: str) -> str:
        return self.etags.get(key) or md5(self.buckets[bucket][key])

    def list(self, bucket: str) -> Iterator[Listed]:
        for key in sorted(self.buckets[bucket]):
            yield Listed(key, len(self.buckets[bucket][key]), self.etag(bucket, key), LM)

    def read(self, bucket: str, key: str, etag: str) -> Body:
        self.reads.append(key)
        if etag != self.etag(bucket, key):
            raise mirror.MirrorError("changed while it was being mirrored (run again)")
        data = self.serve.get(key, self.buckets[bucket][key])
        cut = self.break_after.get(key)

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(data), 4):
                if cut is not None and start >= cut:
                    raise ConnectionResetError(104, "Connection reset by peer")
                yield data[start : start + 4]

        return Body(chunks=chunks())

    def copy(self, bucket: str, key: str, dest_bucket: str, etag: str) -> str:
        self.copies.append(key)
        self.buckets[dest_bucket][key] = self.buckets[bucket][key]
        return md5(self.buckets[bucket][key])


def run(store: FakeStore, target: Path, **job: Any) -> mirror.Report:
    return Mirror(store, MirrorJob(bucket="uploads", target=target, workers=3, **job)).run()


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root except the mirror's own, as relpath -> bytes."""
    out = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if not name.startswith(".hq-mirror"):
                path = Path(folder, name)
                out[str(path.relative_to(root))] = path.read_bytes()
    return out


# --- keys -> paths --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("a.txt", "a.txt"),
        ("photos/2025/cat.jpg", "photos/2025/cat.jpg"),
        ("sp ace/\u00e9t\u00e9.png", "sp ace/\u00e9t\u00e9.png"),
        ("photos/", "photos"),
        ("..a/b..", "..a/b.."),
        ("back\\slash", "back\\slash"),
    ],
)
def test_a_plain_key_maps_to_the_same_relative_path(key: str, path: str) -> None:
    assert key_to_relpath(key) == PurePosixPath(path)


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("../../etc/x", "'..'"),
        ("a/../../b", "'..'"),
        ("..", "'..'"),
        ("./a", "'.'"),
        ("a/./b", "'.'"),
        ("/etc/passwd", "absolute"),
        ("a//b", "empty"),
        ("nul\x00byte", "NUL"),
        ("new\nline", "control"),
        ("", "empty key"),
        (".hq-mirror-manifest.json", "reserved"),
        ("a/.hq-mirror.lock", "reserved"),
        ("x" * 256, "longer than 255"),
        ("a/" * 600, "longer than 1024"),
    ],
)
def test_an_unsafe_key_is_refused_with_the_reason(key: str, why: str) -> None:
    with pytest.raises(UnsafeKey, match=why):
        key_to_relpath(key)


def test_a_symlink_on_the_way_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(UnsafeKey, match="symbolic link"):
        prepare_parent(root, key_to_relpath("link/x"))
    assert list(outside.iterdir()) == []


def test_display_key_escapes_control_characters_and_backticks() -> None:
    assert display_key("a\x00b`c\n") == "a\\x00b'c\\x0a"
    assert display_key("k" * 200, limit=20) == "k" * 17 + "..."


# --- decisions ------------------------------------------------------------------------------------
OBJ = Listed("a", 5, md5(b"hello"), LM)
SAME = Entry(5, md5(b"hello"), LM, "sha")


@pytest.mark.parametrize(
    ("entry", "local", "reason"),
    [
        (None, None, "new"),
        (SAME, None, "local copy missing"),
        (SAME, 4, "size changed"),
        (Entry(4, md5(b"hell"), LM, "sha"), 5, "size changed"),
        (Entry(5, md5(b"jello"), LM, "sha"), 5, "ETag changed"),
        (SAME, 5, None),
        (Entry(5, md5(b"hello"), "2020-01-01T00:00:00+00:00", "sha"), 5, None),
    ],
)
def test_copy_reason(entry: Entry | None, local: int | None, reason: str | None) -> None:
    assert copy_reason(OBJ, entry, local) == reason


def test_without_etags_the_modification_time_decides() -> None:
    obj = Listed("a", 5, "", LM)
    assert copy_reason(obj, Entry(5, "", LM, "sha"), 5) is None
    assert copy_reason(obj, Entry(5, "", "2020-01-01T00:00:00+00:00", "sha"), 5) == "modified"


# --- the manifest ---------------------------------------------------------------------------------
def test_the_manifest_round_trips_and_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    manifest = Manifest(bucket="uploads", objects={"a": SAME}, copies={"m": {"a": "e"}})
    manifest.save(path)
    loaded = Manifest.load(path, "uploads")
    assert loaded.objects == {"a": SAME} and loaded.copies == {"m": {"a": "e"}}
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]  # no temp file left


def test_a_manifest_of_another_bucket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    Manifest(bucket="other").save(path)
    with pytest.raises(ManifestError, match="'other', not 'uploads'"):
        Manifest.load(path, "uploads")


def test_an_unreadable_manifest_is_refused_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(InfraError, match="cannot be read"):
        run(FakeStore(uploads={"a": b"x"}), tmp_path)
    assert (tmp_path / MANIFEST_NAME).read_text() == "{not json"


def test_a_missing_manifest_is_an_empty_one(tmp_path: Path) -> None:
    assert Manifest.load(tmp_path / MANIFEST_NAME, "uploads").objects == {}


# --- runs -----------------------------------------------------------------------------------------
def test_first_run_copies_everything_and_verifies(tmp_path: Path) -> None:
    data = {"a.txt": b"hello", "dir/b.bin": b"\x00\x01" * 50, "dir/sub/c": b"", "photos/": b""}
    store = FakeStore(uploads=data)
    report = run(store, tmp_path)
    assert sorted(report.copied) == sorted(data) and report.skipped == 0 and not report.failed
    assert report.bytes == 105 and report.verified, report.checks
    assert tree(tmp_path) == {"a.txt": b"hello", "dir/b.bin": b"\x00\x01" * 50, "dir/sub/c": b""}
    assert (tmp_path / "photos").is_dir()
    body = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert body["bucket"] == "uploads"
    assert body["objects"]["a.txt"] == {
        "size": 5,
        "etag": md5(b"hello"),
        "last_modified": LM,
        "sha256": hashlib.sha256(b"hello").hexdigest(),
    }
    assert {c.name: c.ok for c in report.checks} == {"checksums": True, "object count": True}
    stamp = (tmp_path / "a.txt").stat()
    assert stamp.st_mtime == dt.datetime.fromisoformat(LM).timestamp()  # the object's time
    assert stamp.st_mode & 0o777 == 0o600  # backups of user uploads are private


def test_second_run_copies_nothing_and_a_changed_object_is_copied_again(tmp_path: Path) -> None:
    store = FakeStore(uploads={"a": b"one", "b": b"two", "c": b"three"})
    run(store, tmp_path)
    store.reads.clear()
    again = run(store, tmp_path)
    assert again.copied == [] and again.skipped == 3 and store.reads == [] and again.verified
    store.buckets["uploads"]["b"] = b"TWO!"
    third = run(store, tmp_path)
    assert third.copied == ["b"] and third.skipped == 2 and store.reads == ["b"]
    assert (tmp_path / "b").read_bytes() == b"TWO!" and third.verified


def test_a_local_copy_deleted_by_hand_is_copied_again(tmp_path: Path) -> None:
    store = FakeStore(uploads={"a": b"one", "b": b"two"})
    run(store, tmp_path)
    (tmp_path / "a").unlink()
    report = run(store, tmp_path)
    assert report.copied == ["a"] and report.verified


def test_objects_deleted_from_the_bucket_keep_their_copy_and_are_reported(tmp_path: Path) -> None:
    store = FakeStore(uploads={"a": b"one", "gone": b"bye"})
    run(store, tmp_path)
    del store.buckets["uploads"]["gone"]
    report = run(store, tmp_path)
    assert report.deleted == ["gone"] and (tmp_path / "gone").read_bytes() == b"bye"
    assert report.verified
    count = next(c for c in report.checks if c.name == "object count")
    assert "holds 1 of the bucket's 1" in count.detail and "1 more kept" in count.detail
    (tmp_path / "gone").unlink()  # removed by hand too: forgotten, no longer reported
    later = run(store, tmp_path)
    assert (
        later.deleted == []
        and "gone" not in Manifest.load(tmp_path / MANIFEST_NAME, "uploads").objects
    )


def test_a_download_failing_half_way_leaves_no_partial_file(tmp_path: Path) -> None:
    store = FakeStore(uploads={"a": b"0123456789", "b": b"fine"})
    store.break_after["a"] = 4
    report = run(store, tmp_path)
    assert [f.key for f in report.failed] == ["a"]
    assert "ConnectionResetError" in report.failed[0].reason
    assert not report.verified and report.copied == ["b"]
    assert tree(tmp_path) == {"b": b"fine"}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    manifest = Manifest.load(tmp_path / MANIFEST_NAME, "uploads")
    assert set(manifest.objects) == {"b"}  # only what was fully written
    del store.break_after["a"]
    healed = run(store, tmp_path)
    assert healed.copied == ["a"] and healed.verified


def test_a_failed_download_does_not_touch_the_previous_copy(tmp_path: Path) -> None:
    store = FakeStore(uploads={"a": b"version one"})
    run(store, tmp_path)
    store.buckets["uploads"]["a"] = b"version two!"
    store.break_after["a"] = 4
    report = run(store, tmp_path)
    assert not report.verified and (tmp_path / "a").read_bytes() == b"version one"


def test_bytes_that_do_not_match_the_etag_are_not_kept(tmp_path: Path) -> None:
    store = FakeStore(uploads={"a": b"hello"})
    store.serve["a"] = b"jello"  # same size, other content
    report = run(store, tmp_path)
    assert report.failed[0].reason == "the MD5 of the bytes received differs from the ETag"
    assert not (tmp_path / "a").exists() and not report.verified


def test_a_short_body_is_not_kept(tmp_path: Path) -> None:
    store = FakeStore(uploads={"a": b"hello"})
    store.serve["a"] = b"hel"
    report = run(store, tmp_path)
    assert report.failed[0].reason == "got 3 bytes, the listing says 5"
    assert not (tmp_path / "a").exists()


def test_a_multipart_etag_skips_the_md5_check_but_not_the_size(tmp_path: Path) -> None:
    store = FakeStore(uploads={"a": b"hello"})
    store.etags["a"] = "0123456789abcdef0123456789abcdef-2"
    report = run(store, tmp_path)
    assert report.copied == ["a"] and report.verified
    again = run(store, tmp_path)
    assert again.skipped == 1


def test_hostile_keys_are_refused_and_nothing_escapes(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "mirror"
    bad = ["../../etc/x", "../escape", "/abs", "a/../../b", "nul\x00x", ".hq-mirror-manifest.json"]
    store = FakeStore(uploads={**dict.fromkeys(bad, b"evil"), "ok": b"fine"})
    report = run(store, root)
    assert sorted(f.key for f in report.failed) == sorted(bad)
    assert all(f.reason.startswith("unsafe key: ") for f in report.failed)
    assert report.copied == ["ok"] and not report.verified
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {
        "deep/mirror/ok",
        f"deep/mirror/{MANIFEST_NAME}",
        "deep/mirror/.hq-mirror.lock",
    }
    assert store.reads == ["ok"]  # a refused key is never even downloaded


def test_a_symlink_planted_in_the_folder_does_not_redirect_a_write(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "photos").symlink_to(outside)
    report = run(FakeStore(uploads={"photos/cat.jpg": b"meow"}), root)
    assert "symbolic link" in report.failed[0].reason and list(outside.iterdir()) == []


def test_a_file_and_a_folder_of_the_same_name_fail_one_of_them(tmp_path: Path) -> None:
    report = run(FakeStore(uploads={"a": b"file", "a/b": b"nested"}), tmp_path)
    assert len(report.failed) == 1 and len(report.copied) == 1 and not report.verified


def test_leftover_temp_files_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    leftover = tmp_path / "sub" / ".hq-mirror.abc123.part"
    leftover.write_bytes(b"half")
    run(FakeStore(uploads={"a": b"x"}), tmp_path)
    assert not leftover.exists()


def test_a_second_mirror_into_the_same_folder_is_refused_while_one_runs(tmp_path: Path) -> None:
    with mirror.FolderLock(tmp_path), pytest.raises(InfraError, match="Another mirror"):
        run(FakeStore(uploads={"a": b"x"}), tmp_path)


def test_verify_all_reads_back_unchanged_files_and_catches_bit_rot(tmp_path: Path) -> None:
    store = FakeStore(uploads={"a": b"hello", "b": b"world"})
    run(store, tmp_path)
    (tmp_path / "b").write_bytes(b"wOrld")  # same size: only a full read notices
    plain = run(store, tmp_path)
    assert plain.verified
    full = run(store, tmp_path, verify_all=True)
    assert not full.verified and [f.key for f in full.failed] == ["b"]
    assert "differs from the SHA-256" in full.failed[0].reason
    healed = run(store, tmp_path)  # dropped from the manifest: copied again
    assert healed.copied == ["b"] and (tmp_path / "b").read_bytes() == b"world"


def test_the_listing_failing_is_an_error_for_the_whole_run(tmp_path: Path) -> None:
    class Down(FakeStore):
        def list(self, bucket: str) -> Iterator[Listed]:
            raise ConnectionRefusedError(111, "refused")

    with pytest.raises(InfraError, match="Cannot list bucket uploads: ConnectionRefusedError"):
        run(Down(uploads={}), tmp_path)


# --- the mirror bucket ----------------------------------------------------------------------------
def test_the_mirror_bucket_gets_server_side_copies_incrementally(tmp_path: Path) -> None:
    store = FakeStore(uploads={"a": b"one", "b": b"two"}, mirror={})
    first = run(store, tmp_path, mirror_bucket="mirror")
    assert first.bucket_copy is not None and sorted(first.bucket_copy.copied) == ["a", "b"]
    assert store.buckets["mirror"] == {"a": b"one", "b": b"two"} and first.verified
    store.copies.clear()
    second = run(store, tmp_path, mirror_bucket="mirror")
    assert second.bucket_copy is not None and second.bucket_copy.skipped == 2
    assert store.copies == [] and second.verified
    store.buckets["uploads"]["a"] = b"ONE"
    third = run(store, tmp_path, mirror_bucket="mirror")
    assert store.copies == ["a"] and store.buckets["mirror"]["a"] == b"ONE" and third.verified


def test_a_multipart_object_is_not_copied_again_to_the_mirror_bucket(tmp_path: Path) -> None:
    store = FakeStore(uploads={"a": b"one"}, mirror={})
    store.etags["a"] = "0123456789abcdef0123456789abcdef-3"  # its copy gets another ETag
    run(store, tmp_path, mirror_bucket="mirror")
    store.copies.clear()
    run(store, tmp_path, mirror_bucket="mirror")
    assert store.copies == []


def test_a_missing_mirror_bucket_fails_the_run_but_not_the_folder(tmp_path: Path) -> None:
    store = FakeStore(uploads={"a": b"one"})
    report = run(store, tmp_path, mirror_bucket="nowhere")
    assert report.copied == ["a"] and not report.verified
    assert report.bucket_copy is not None
    assert report.bucket_copy.failed[0].reason == "bucket nowhere does not exist; create it"


def test_a_run_that_dies_half_way_has_recorded_what_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mirror, "SAVE_EVERY", 0.0)  # save after every object

    def die(*_args: Any) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(Mirror, "_verify_folder", die)
    store = FakeStore(uploads={"a": b"one", "b": b"two", "c": b"three"})
    with pytest.raises(RuntimeError):
        run(store, tmp_path)
    recorded = Manifest.load(tmp_path / MANIFEST_NAME, "uploads").objects
    assert set(recorded) >= {"a", "b"}  # the last one may land after the last save
    monkeypatch.undo()
    store.reads.clear()
    report = run(store, tmp_path)
    assert report.verified and len(report.copied) == 3 - len(recorded)


def test_the_store_needs_both_keys_and_never_shows_them() -> None:
    with pytest.raises(InfraError) as info:
        mirror.MinioStore.connect(
            "http://127.0.0.1:9",
            {"MINIO_ACCESS_KEY": "AKIAVISIBLE123"},
            connections=2,
            connect_timeout=1,
            read_timeout=1,
        )
    assert info.value.message == "The deployment's env file does not set MINIO_SECRET_KEY."
    with pytest.raises(InfraError, match="not an http"):
        mirror.MinioStore.connect("ftp://x", {}, connections=2, connect_timeout=1, read_timeout=1)
