"""Mirror an S3 bucket into a folder (and optionally into a second bucket), incrementally.

This is the bot's own ``mc mirror``: the bucket is listed with the paginating list API
(ListObjectsV2), and only objects that are new or whose size and ETag changed since the last run
are downloaded. A JSON manifest in the target folder (written atomically) remembers, per key,
the size, ETag, last-modified time and SHA-256 of the local copy.

Safety rules, each with a test:

* an object key becomes a relative path only when every ``/``-separated part is a plain name:
  no ``..``, ``.`` or empty part, no leading ``/``, no NUL or other control character, nothing
  starting with :data:`RESERVED` (the manifest, the lock and temp files live under that name),
  and no part longer than a file name may be. Folders are created one part at a time and a
  symbolic link on the way is refused, so nothing is written outside the target folder;
* each object is streamed to a temp file in its final folder, fsynced, checked (byte count
  against the listing, MD5 against a single-part ETag) and only then renamed into place; a
  failed download leaves no partial file;
* the manifest records only objects that were fully written (and their folders fsynced);
* objects deleted from the bucket keep their local copy (``mc mirror`` without ``--remove``)
  and are reported.

``Store`` is the small slice of S3 the engine uses, so unit tests can hand it a fake;
:class:`MinioStore` is the real one on the minio SDK.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import urllib3
from minio.commonconfig import CopySource
from minio.error import S3Error

from commands.infra.gateway import InfraError
from commands.infra.s3 import make_client

RESERVED = ".hq-mirror"
MANIFEST_NAME = RESERVED + "-manifest.json"
LOCK_NAME = RESERVED + ".lock"
TEMP_PREFIX = RESERVED + "."
TEMP_SUFFIX = ".part"
MANIFEST_VERSION = 1
CHUNK = 256 * 1024
NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs)
KEY_MAX = 1024  # bytes in an S3 object key
SAVE_EVERY = 30.0  # seconds between manifest saves during a long run
SSE_HEADERS = ("x-amz-server-side-encryption", "x-amz-server-side-encryption-customer-algorithm")
_PLAIN_ETAG = re.compile(r"^[0-9a-f]{32}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Progress = Callable[[str], None]


class UnsafeKey(ValueError):
    """An object key that cannot be written as a file inside the target folder."""


class MirrorError(Exception):
    """One object could not be mirrored; the message is a short, safe sentence."""


# --- keys and paths -------------------------------------------------------------------------------
def key_to_relpath(key: str) -> PurePosixPath:
    """Given an object key, return the relative path its copy gets in the target folder. A
    folder marker (``photos/``) maps to the folder. Raise UnsafeKey, with the reason, for a key
    that could escape the folder or clash with the mirror's own files."""
    if not key:
        raise UnsafeKey("empty key")
    if "\x00" in key:
        raise UnsafeKey("contains a NUL byte")
    if _CONTROL.search(key):
        raise UnsafeKey("contains a control character")
    if len(key.encode("utf-8", "surrogatepass")) > KEY_MAX:
        raise UnsafeKey(f"longer than {KEY_MAX} bytes")
    if key.startswith("/"):
        raise UnsafeKey("absolute path")
    body = key[:-1] if key.endswith("/") else key
    parts = body.split("/")
    for part in parts:
        if not part:
            raise UnsafeKey("has an empty path part (//)")
        if part in {".", ".."}:
            raise UnsafeKey(f"has a {part!r} path part")
        if part.startswith(RESERVED):
            raise UnsafeKey(f"uses the mirror's reserved name {RESERVED}*")
        if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
            raise UnsafeKey(f"has a part longer than {NAME_MAX} bytes")
    return PurePosixPath(*parts)


def is_folder_marker(key: str) -> bool:
    return key.endswith("/")


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def prepare_parent(root: Path, rel: PurePosixPath) -> Path:
    """Given the (real, existing) target folder and a safe relative path, create the folders on
    the way one part at a time and return the absolute destination. Raise UnsafeKey when a part
    on the way is a symbolic link or a file, so a link planted in the folder cannot redirect a
    write outside it."""
    current = root
    for part in rel.parts[:-1]:
        current = current / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(current, 0o750)
        info = os.lstat(current)
        if stat.S_ISLNK(info.st_mode):
            raise UnsafeKey(f"the folder {part!r} on its path is a symbolic link")
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeKey(f"{part!r} on its path is a file, not a folder")
    dest = root / Path(*rel.parts)
    if not _inside(root, dest):  # cannot happen after key_to_relpath; kept as a last guard
        raise UnsafeKey("escapes the target folder")
    return dest


def display_key(key: str, limit: int = 80) -> str:
    """Given an object key, return it printable (control characters escaped, backticks
    replaced) and at most ``limit`` characters, for chat and logs."""
    shown = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", key).replace("`", "'")
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def is_plain_etag(etag: str) -> bool:
    """Return True when the ETag is the MD5 of the content (a single-part upload, no SSE).
    A multipart ETag looks like ``<md5 of the part md5s>-<parts>``."""
    return bool(_PLAIN_ETAG.match(etag))


# --- the manifest ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Listed:
    """An object as the bucket's listing describes it."""

    key: str
    size: int
    etag: str
    last_modified: str  # ISO 8601, UTC


@dataclass(frozen=True)
class Entry:
    """What the manifest knows about one local copy."""

    size: int
    etag: str
    last_modified: str
    sha256: str
    folder: bool = False

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "size": self.size,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "sha256": self.sha256,
        }
        if self.folder:
            body["folder"] = True
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Entry:
        return cls(
            size=int(body["size"]),
            etag=str(body.get("etag", "")),
            last_modified=str(body.get("last_modified", "")),
            sha256=str(body.get("sha256", "")),
            folder=bool(body.get("folder", False)),
        )


class ManifestError(Exception):
    """The manifest belongs to another bucket, or cannot be read."""


@dataclass
class Manifest:
    """key -> :class:`Entry` of the local copies, and, per mirror bucket, key -> the source ETag
    last copied there."""

    bucket: str
    objects: dict[str, Entry] = field(default_factory=dict)
    copies: dict[str, dict[str, str]] = field(default_factory=dict)
    updated_at: str = ""

    @classmethod
    def load(cls, path: Path, bucket: str) -> Manifest:
        """Given the manifest's path and the bucket being mirrored, return the manifest (empty
        when there is none yet). Raise ManifestError when it is unreadable or belongs to
        another bucket."""
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(bucket=bucket)
        try:
            body = json.loads(raw)
            if body.get("version") != MANIFEST_VERSION:
                raise ValueError(f"version {body.get('version')!r}")
            objects = {str(k): Entry.from_json(v) for k, v in body["objects"].items()}
            copies = {
                str(b): {str(k): str(e) for k, e in keys.items()}
                for b, keys in body.get("copies", {}).items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"{path.name} cannot be read ({type(exc).__name__})") from None
        owner = str(body.get("bucket", ""))
        if owner != bucket:
            raise ManifestError(
                f"the folder holds a mirror of bucket {owner!r}, not {bucket!r}; point "
                "HQ_MINIO_BACKUP_DIR at another folder"
            )
        return cls(bucket=bucket, objects=objects, copies=copies, updated_at=body.get("at", ""))

    def as_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "bucket": self.bucket,
            "at": self.updated_at,
            "objects": {k: self.objects[k].as_json() for k in sorted(self.objects)},
            "copies": {b: dict(sorted(keys.items())) for b, keys in sorted(self.copies.items())},
        }

    def save(self, path: Path) -> None:
        """Write the manifest atomically: temp file in the same folder, fsync, rename, fsync
        the folder."""
        self.updated_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        data = json.dumps(self.as_json(), separators=(",", ":"), ensure_ascii=True).encode()
        atomic_write(path, data)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsynced and renamed,
    then fsync the folder. A crash leaves the old file or the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- decisions ------------------------------------------------------------------------------------
def local_state(path: Path, folder: bool) -> int | None:
    """Return the size of the local copy (0 for a folder), or None when it is missing or of
    the wrong kind (a file where a folder should be, a symbolic link)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if folder:
        return 0 if stat.S_ISDIR(info.st_mode) else None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def copy_reason(obj: Listed, entry: Entry | None, local_size: int | None) -> str | None:
    """Given a listed object, its manifest entry and its local copy's size, return why it must
    be copied, or None to skip it. Unchanged means: same size and ETag (or, when either side
    has no ETag, the same last-modified time), and a local copy of that size."""
    if entry is None:
        return "new"
    if local_size is None:
        return "local copy missing"
    if entry.size != obj.size or local_size != (0 if entry.folder else obj.size):
        return "size changed"
    if obj.etag and entry.etag:
        return None if obj.etag == entry.etag else "ETag changed"
    return None if obj.last_modified == entry.last_modified else "modified"


# --- the store ------------------------------------------------------------------------------------
@dataclass
class Body:
    """An object being read: its bytes in chunks, whether the server stored it encrypted (then
    its ETag is not the MD5 of the content, even when it looks like one), and how to let go of
    the connection."""

    chunks: Iterable[bytes]
    encrypted: bool = False
    close: Callable[[], None] = lambda: None


class Store(Protocol):
    """The slice of S3 the mirror needs."""

    def exists(self, bucket: str) -> bool: ...

    def list(self, bucket: str) -> Iterator[Listed]: ...

    def read(self, bucket: str, key: str, etag: str) -> Body:
        """Open the object for reading; fail (S3 PreconditionFailed) when its ETag is no
        longer ``etag``. The caller closes the body."""
        ...

    def copy(self, bucket: str, key: str, dest_bucket: str, etag: str) -> str:
        """Copy server-side, only while the source's ETag is ``etag``; return the copy's ETag."""
        ...


def _iso(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat()


def _timestamp(iso: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


def describe_error(exc: BaseException) -> str:
    """Given an exception from a store or the file system, return a short sentence with no
    secret in it (S3 error codes, OS error names, never a URL with a signature)."""
    if isinstance(exc, S3Error):
        if exc.code == "PreconditionFailed":
            return "changed while it was being mirrored (run again)"
        if exc.code == "NoSuchKey":
            return "deleted while it was being mirrored"
        return f"S3 {exc.code}"
    if isinstance(exc, MirrorError | UnsafeKey):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return type(exc).__name__


class MinioStore:
    """:class:`Store` on the minio SDK. The client is its own (not the health checks'): its
    connection pool is as large as the download pool and its read timeout suits large
    objects."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def connect(
        cls,
        endpoint: str,
        env: Mapping[str, str],
        *,
        connections: int,
        connect_timeout: float,
        read_timeout: float,
        region: str = "us-east-1",
    ) -> MinioStore:
        """Given the endpoint URL and the deployment's env values (keys ``MINIO_ACCESS_KEY`` and
        ``MINIO_SECRET_KEY``), return a store. Raise InfraError when a key is missing."""
        pool = urllib3.PoolManager(
            maxsize=max(2, connections),
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            # A refused or reset connection is retried; a read that fails half-way is not
            # (that object counts as failed and the next run copies it).
            retries=urllib3.Retry(total=2, connect=2, read=0, status=0, backoff_factor=0.2),
        )
        return cls(make_client(endpoint, env, pool, region))

    def exists(self, bucket: str) -> bool:
        return bool(self.client.bucket_exists(bucket))

    def list(self, bucket: str) -> Iterator[Listed]:
        for obj in self.client.list_objects(bucket, recursive=True):
            yield Listed(
                key=str(obj.object_name),
                size=int(obj.size or 0),
                etag=str(obj.etag or "").strip('"').lower(),
                last_modified=_iso(obj.last_modified),
            )

    def read(self, bucket: str, key: str, etag: str) -> Body:
        headers = {"If-Match": f'"{etag}"'} if etag else None
        response = self.client.get_object(bucket, key, request_headers=headers)

        def close() -> None:
            response.close()
            response.release_conn()

        encrypted = any(h in response.headers for h in SSE_HEADERS)
        return Body(chunks=response.stream(CHUNK), encrypted=encrypted, close=close)

    def copy(self, bucket: str, key: str, dest_bucket: str, etag: str) -> str:
        source = CopySource(bucket, key, match_etag=etag or None)
        result = self.client.copy_object(dest_bucket, key, source)
        return str(result.etag or "").strip('"').lower()


# --- the run --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    key: str
    reason: str


@dataclass(frozen=True)
class Check:
    """One verification: its name, whether it passed, and what was compared."""

    name: str
    ok: bool
    detail: str


@dataclass
class BucketCopy:
    """The server-side copy into the mirror bucket."""

    bucket: str
    copied: list[str] = field(default_factory=list)
    skipped: int = 0
    failed: list[Failure] = field(default_factory=list)
    bytes: int = 0
    checks: list[Check] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.failed and bool(self.checks) and all(c.ok for c in self.checks)


@dataclass
class Report:
    """What a mirror run did."""

    bucket: str
    target: Path
    listed: int = 0
    copied: list[str] = field(default_factory=list)
    skipped: int = 0
    failed: list[Failure] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    checks: list[Check] = field(default_factory=list)
    bucket_copy: BucketCopy | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        folder_ok = not self.failed and bool(self.checks) and all(c.ok for c in self.checks)
        return folder_ok and (self.bucket_copy is None or self.bucket_copy.verified)


@dataclass(frozen=True)
class MirrorJob:
    """What to mirror, where, and how."""

    bucket: str
    target: Path
    mirror_bucket: str = ""
    workers: int = 4
    verify_all: bool = False


class FolderLock:
    """An exclusive, non-blocking ``flock`` on the target folder's lock file: one mirror into a
    folder at a time (across processes on this host)."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InfraError(
                f"Another mirror into {self.path.parent} is running; try again when it is done."
            ) from None
        self._fd = fd
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(store: Store, bucket: str, obj: Listed, dest: Path) -> Entry:
    """Download one object to ``dest``: stream it into a temp file in the same folder, hashing
    as it goes; fsync; check the byte count against the listing and the MD5 against a
    single-part ETag; rename into place. Return the manifest entry. On any failure the temp file
    is removed and the exception propagates; ``dest`` is untouched."""
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=dest.parent)
    try:
        sha = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False)
        size = 0
        with os.fdopen(fd, "wb") as out:
            body = store.read(bucket, obj.key, obj.etag)
            try:
                for chunk in body.chunks:
                    out.write(chunk)
                    sha.update(chunk)
                    md5.update(chunk)
                    size += len(chunk)
            finally:
                body.close()
            out.flush()
            os.fsync(out.fileno())
        if size != obj.size:
            raise MirrorError(f"got {size} bytes, the listing says {obj.size}")
        if is_plain_etag(obj.etag) and not body.encrypted and md5.hexdigest() != obj.etag:
            raise MirrorError("the MD5 of the bytes received differs from the ETag")
        if os.path.isdir(dest) and not os.path.islink(dest):
            raise MirrorError("a folder of that name is in the way")
        stamp = _timestamp(obj.last_modified)
        if stamp is not None:  # the object's time, as `ls -l` of the backup should show
            os.utime(tmp, (stamp, stamp))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Entry(size=size, etag=obj.etag, last_modified=obj.last_modified, sha256=sha.hexdigest())


def make_folder(dest: Path, obj: Listed) -> Entry:
    """Mirror a folder marker (an empty object whose key ends with ``/``) as a folder."""
    if obj.size:
        raise MirrorError(f"a folder marker holding {obj.size} bytes cannot be mirrored")
    with contextlib.suppress(FileExistsError):
        os.mkdir(dest, 0o750)
    if local_state(dest, folder=True) is None:
        raise MirrorError("a file of that name is in the way")
    empty = hashlib.sha256(b"").hexdigest()
    return Entry(0, obj.etag, obj.last_modified, empty, folder=True)


def _run_pool(
    workers: int,
    items: Iterable[Any],
    work: Callable[[Any], Any],
    done: Callable[[Any, Future[Any]], None],
) -> None:
    """Run ``work(item)`` for each item on ``workers`` threads, with at most ``4 * workers`` in
    flight (so a huge bucket does not queue a million futures), and call ``done(item, future)``
    on this thread as each finishes."""
    limit = 4 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hq-mirror") as pool:
        running: dict[Future[Any], Any] = {}
        for item in items:
            running[pool.submit(work, item)] = item
            if len(running) >= limit:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    done(running.pop(future), future)
        for future in list(running):
            future.exception()  # waits
            done(running.pop(future), future)


class Mirror:
    """One mirror run. Build it with the store and the job, then call :meth:`run`."""

    def __init__(self, store: Store, job: MirrorJob, progress: Progress | None = None) -> None:
        self.store = store
        self.job = job
        self.progress = progress or (lambda _line: None)

    def run(self) -> Report:
        """Mirror the bucket into the folder (and the mirror bucket), verify, and return the
        report. Raise InfraError when the folder cannot be used, the manifest belongs to
        another bucket, or the bucket cannot be listed; per-object problems are in the
        report."""
        started = time.monotonic()
        job = self.job
        try:
            job.target.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise InfraError(f"Cannot create {job.target}: {describe_error(exc)}.") from None
        root = Path(os.path.realpath(job.target))
        report = Report(bucket=job.bucket, target=root)
        with FolderLock(root):
            manifest_path = root / MANIFEST_NAME
            try:
                manifest = Manifest.load(manifest_path, job.bucket)
            except ManifestError as exc:
                raise InfraError(f"The mirror's manifest in {root}: {exc}.") from None
            self._clean_temp(root)
            listed = self._list(job.bucket)
            report.listed = len(listed)
            self.progress(f"listed {len(listed)} object(s) in {job.bucket}")
            self._mirror_folder(root, manifest, manifest_path, listed, report)
            self._verify_folder(root, manifest, listed, report)
            if job.mirror_bucket:
                report.bucket_copy = self._mirror_bucket(manifest, listed)
            try:
                manifest.save(manifest_path)
            except OSError as exc:
                raise InfraError(
                    f"The copies are written, but the manifest in {root} is not "
                    f"({describe_error(exc)}); the next run copies them again."
                ) from None
        report.seconds = time.monotonic() - started
        return report

    # --- phases ---------------------------------------------------------------------------------
    def _list(self, bucket: str) -> list[Listed]:
        try:
            return list(self.store.list(bucket))
        except S3Error as exc:
            raise InfraError(f"Cannot list bucket {bucket}: S3 {exc.code}.") from None
        except InfraError:
            raise
        except Exception as exc:
            raise InfraError(f"Cannot list bucket {bucket}: {describe_error(exc)}.") from None

    def _clean_temp(self, root: Path) -> None:
        """Remove temp files a killed run left behind (we hold the folder's lock)."""
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
            for name in files:
                if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(folder, name))

    def _mirror_folder(
        self,
        root: Path,
        manifest: Manifest,
        manifest_path: Path,
        listed: list[Listed],
        report: Report,
    ) -> None:
        present = {obj.key for obj in listed}
        for key in sorted(k for k in manifest.objects if k not in present):
            kept = manifest.objects[key]
            if local_state(root.joinpath(*key_to_relpath(key).parts), kept.folder) is None:
                manifest.objects.pop(key)  # gone from the bucket and from the folder: forget it
            else:
                report.deleted.append(key)  # kept, like `mc mirror` without --remove
        todo: list[tuple[Listed, PurePosixPath]] = []
        for obj in listed:
            try:
                rel = key_to_relpath(obj.key)
            except UnsafeKey as exc:
                report.failed.append(Failure(obj.key, f"unsafe key: {exc}"))
                continue
            folder = is_folder_marker(obj.key)
            entry = manifest.objects.get(obj.key)
            size = local_state(root.joinpath(*rel.parts), folder)
            if copy_reason(obj, entry, size) is None:
                report.skipped += 1
            else:
                todo.append((obj, rel))
        if not todo:
            return
        self.progress(
            f"copying {len(todo)} object(s) ({sum(o.size for o, _ in todo)} bytes) with "
            f"{self.job.workers} worker(s); {report.skipped} unchanged"
        )
        touched: set[Path] = set()
        last_save = time.monotonic()

        def work(item: tuple[Listed, PurePosixPath]) -> tuple[Entry, Path]:
            obj, rel = item
            dest = prepare_parent(root, rel)
            if is_folder_marker(obj.key):
                return make_folder(dest, obj), dest.parent
            return fetch(self.store, self.job.bucket, obj, dest), dest.parent

        def done(item: tuple[Listed, PurePosixPath], future: Future[tuple[Entry, Path]]) -> None:
            nonlocal last_save
            obj = item[0]
            exc = future.exception()
            if exc is not None:
                report.failed.append(Failure(obj.key, describe_error(exc)))
                return
            entry, folder = future.result()
            touched.add(folder)
            manifest.objects[obj.key] = entry
            report.copied.append(obj.key)
            report.bytes += entry.size
            if time.monotonic() - last_save > SAVE_EVERY:
                self._durable(touched)
                manifest.save(manifest_path)
                last_save = time.monotonic()
                self.progress(f"copied {len(report.copied)} of {len(todo)} object(s)")

        _run_pool(self.job.workers, todo, work, done)
        self._durable(touched)

    @staticmethod
    def _durable(folders: set[Path]) -> None:
        """fsync the folders that got new names, so the renames survive a crash before the
        manifest that records them is written."""
        for folder in folders:
            fsync_dir(folder)
        folders.clear()

    def _verify_folder(
        self, root: Path, manifest: Manifest, listed: list[Listed], report: Report
    ) -> None:
        self.progress("verifying the folder")
        by_key = {obj.key: obj for obj in listed}
        # 1. every object copied now: a second read gives the SHA-256 computed while streaming,
        #    and size (and MD5 = single-part ETag, checked while streaming) match the listing.
        copied = [k for k in report.copied if not manifest.objects[k].folder]
        reread = self._rehash(root, manifest, copied, report)
        size_bad = [k for k in report.copied if manifest.objects[k].size != by_key[k].size]
        report.checks.append(
            Check(
                "checksums",
                not reread and not size_bad,
                f"{len(copied) - len(reread)} of {len(copied)} copied file(s) read back with "
                "the SHA-256 computed while downloading; size"
                + (" and MD5 (single-part ETags)" if copied else "")
                + " match the listing"
                + (f"; {len(size_bad)} size mismatch(es)" if size_bad else ""),
            )
        )
        # 2. with --verify-all, every unchanged file too
        if self.job.verify_all:
            now = set(report.copied)
            others = [
                k
                for k in by_key
                if k in manifest.objects and k not in now and not manifest.objects[k].folder
            ]
            bad = self._rehash(root, manifest, others, report)
            report.checks.append(
                Check(
                    "full read",
                    not bad,
                    f"{len(others) - len(bad)} of {len(others)} unchanged file(s) match their "
                    "SHA-256 in the manifest",
                )
            )
        # 3. count: every object of the bucket has its copy, of the listed size
        held = 0
        for obj in listed:
            entry = manifest.objects.get(obj.key)
            if entry is None:
                continue
            try:
                rel = key_to_relpath(obj.key)
            except UnsafeKey:
                continue
            size = local_state(root.joinpath(*rel.parts), entry.folder)
            if copy_reason(obj, entry, size) is None:  # the copy is of this very version
                held += 1
        extra = f"; {len(report.deleted)} more kept from objects deleted in the bucket"
        report.checks.append(
            Check(
                "object count",
                held == len(listed),
                f"the folder holds {held} of the bucket's {len(listed)} object(s)"
                + (extra if report.deleted else ""),
            )
        )

    def _rehash(self, root: Path, manifest: Manifest, keys: list[str], report: Report) -> list[str]:
        """Read the files of ``keys`` again (on the pool); return the keys whose SHA-256 differs
        from the manifest's. Those are dropped from the manifest (the next run copies them
        again) and reported as failed."""
        bad: list[str] = []

        def work(key: str) -> str:
            rel = key_to_relpath(key)
            return sha256_file(root.joinpath(*rel.parts))

        def done(key: str, future: Future[str]) -> None:
            exc = future.exception()
            if exc is None and future.result() == manifest.objects[key].sha256:
                return
            why = "differs from the SHA-256 written" if exc is None else describe_error(exc)
            bad.append(key)
            report.failed.append(Failure(key, f"read back: {why}"))
            manifest.objects.pop(key, None)

        _run_pool(self.job.workers, keys, work, done)
        return bad

    def _mirror_bucket(self, manifest: Manifest, listed: list[Listed]) -> BucketCopy:
        dest = self.job.mirror_bucket
        result = BucketCopy(bucket=dest)
        try:
            if not self.store.exists(dest):
                result.failed.append(Failure("", f"bucket {dest} does not exist; create it"))
                return result
            existing = {obj.key: obj for obj in self._list(dest)}
        except InfraError as exc:
            result.failed.append(Failure("", exc.message))
            return result
        except Exception as exc:
            result.failed.append(Failure("", describe_error(exc)))
            return result
        done_before = manifest.copies.setdefault(dest, {})
        todo: list[Listed] = []
        for obj in listed:
            there = existing.get(obj.key)
            same_size = there is not None and there.size == obj.size
            same_etag = there is not None and is_plain_etag(obj.etag) and there.etag == obj.etag
            if same_size and (done_before.get(obj.key) == obj.etag or same_etag):
                result.skipped += 1
                done_before[obj.key] = obj.etag
            else:
                todo.append(obj)
        if todo:
            self.progress(f"copying {len(todo)} object(s) to bucket {dest} (server-side)")

        def work(obj: Listed) -> str:
            return self.store.copy(self.job.bucket, obj.key, dest, obj.etag)

        def done(obj: Listed, future: Future[str]) -> None:
            exc = future.exception()
            if exc is not None:
                result.failed.append(Failure(obj.key, describe_error(exc)))
                done_before.pop(obj.key, None)
                return
            done_before[obj.key] = obj.etag
            result.copied.append(obj.key)
            result.bytes += obj.size

        _run_pool(self.job.workers, todo, work, done)
        # forget keys no longer in the source (the copies stay in the mirror bucket)
        for key in [k for k in done_before if k not in {o.key for o in listed}]:
            done_before.pop(key)
        try:
            after = {obj.key: obj for obj in self._list(dest)}
        except InfraError as exc:
            result.checks.append(Check("mirror bucket", False, exc.message))
            return result
        missing = [o.key for o in listed if o.key not in after]
        wrong = [o.key for o in listed if o.key in after and after[o.key].size != o.size]
        result.checks.append(
            Check(
                "mirror bucket",
                not missing and not wrong,
                f"bucket {dest} holds {len(listed) - len(missing) - len(wrong)} of the "
                f"{len(listed)} object(s) with the same size"
                + (f"; {len(missing)} missing" if missing else "")
                + (f"; {len(wrong)} of another size" if wrong else ""),
            )
        )
        return result


def folder_usage(root: Path) -> tuple[int, int]:
    """Return (files, bytes) under the mirror folder, not counting the mirror's own files
    (manifest, lock, temp files) and not following symbolic links."""
    files = total = 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        for name in names:
            if name.startswith(RESERVED):
                continue
            try:
                info = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                files += 1
                total += info.st_size
    return files, total
