"""Where backups live: the catalogue (a table in hq-bot's own database), the one-at-a-time lock,
files written atomically, and the streamed S3 upload.

The lock works across threads, processes and replicas that share hq-bot's database. Its row in
``backup_locks`` names the holder (so a second request can be told who and since when); the
primary key makes taking it atomic. On PostgreSQL a session-level advisory lock, held on a
dedicated connection, is what really decides: it disappears with the holder's connection when
the process dies. Elsewhere (SQLite, one host) the holder refreshes a heartbeat, and a lock
whose heartbeat is older than ``stale_after`` is taken over with a compare-and-delete.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from approvals.models import Backup, BackupLock, BackupState, utcnow
from commands.spec import UserError

log = logging.getLogger(__name__)

LOCK_NAME = "database"
ADVISORY_KEY = 0x68712D62616B  # "hq-bak": one key for every hq-bot sharing a PostgreSQL
PARTIAL = ".partial-"
BACKUP_WORK = "A backup or restore"


def advisory_key(name: str) -> int:
    """Given a lock's name, return its PostgreSQL advisory lock key (the same in every
    replica): the historic key for the backup lock, a hash of the name for the others."""
    if name == LOCK_NAME:
        return ADVISORY_KEY
    return int.from_bytes(hashlib.sha256(f"hq-bot lock {name}".encode()).digest()[:7], "big")


def aware(value: dt.datetime) -> dt.datetime:
    """Given a datetime from the database (naive on SQLite), return it in UTC."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def ago(seconds: float) -> str:
    """Given seconds, return a short human age: ``45 s``, ``12 min``, ``3 h``, ``2 d``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


# --- the catalogue ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BackupInfo:
    """A catalogue row as plain data (safe to pass between threads)."""

    id: str
    kind: str
    state: str
    file_name: str
    path: str
    size: int
    sha256: str
    encrypted: bool
    s3_bucket: str
    s3_key: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    duration_s: float
    table_counts: Mapping[str, int]
    verified: bool
    verified_at: dt.datetime | None
    op_id: str = ""
    requested_by: str = ""
    error: str = ""
    deleted_at: dt.datetime | None = None

    @classmethod
    def of(cls, row: Backup) -> BackupInfo:
        try:
            counts = {str(k): int(v) for k, v in json.loads(row.table_counts or "{}").items()}
        except (ValueError, TypeError, AttributeError):
            counts = {}
        return cls(
            id=row.id,
            kind=row.kind,
            state=row.state,
            file_name=row.file_name,
            path=row.path,
            size=int(row.size or 0),
            sha256=row.sha256,
            encrypted=bool(row.encrypted),
            s3_bucket=row.s3_bucket,
            s3_key=row.s3_key,
            started_at=aware(row.started_at),
            finished_at=aware(row.finished_at) if row.finished_at else None,
            duration_s=float(row.duration_s or 0.0),
            table_counts=counts,
            verified=bool(row.verified),
            verified_at=aware(row.verified_at) if row.verified_at else None,
            op_id=row.op_id,
            requested_by=row.requested_by,
            error=row.error,
            deleted_at=aware(row.deleted_at) if row.deleted_at else None,
        )

    @property
    def where(self) -> str:
        """Where the backup is: ``disk``, ``disk + s3`` or ``s3``."""
        places = []
        if self.path and self.state == BackupState.COMPLETE:
            places.append("disk")
        if self.s3_key:
            places.append("s3")
        return " + ".join(places) or "-"


class Catalogue:
    """The ``backups`` table of hq-bot's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def _update(self, backup_id: str, **values: Any) -> int:
        with self._sessions.begin() as session:
            result = session.execute(update(Backup).where(Backup.id == backup_id).values(**values))
            return int(getattr(result, "rowcount", 0) or 0)

    def start(self, info: BackupInfo) -> None:
        """Record a backup that starts now (state running)."""
        with self._sessions.begin() as session:
            session.add(
                Backup(
                    id=info.id,
                    kind=info.kind,
                    state=BackupState.RUNNING,
                    file_name=info.file_name,
                    path=info.path,
                    encrypted=info.encrypted,
                    s3_bucket=info.s3_bucket,
                    s3_key="",
                    started_at=info.started_at,
                    op_id=info.op_id,
                    requested_by=info.requested_by,
                )
            )

    def complete(
        self,
        backup_id: str,
        *,
        size: int,
        sha256: str,
        finished_at: dt.datetime,
        duration_s: float,
        table_counts: Mapping[str, int],
        verified: bool,
        s3_key: str,
        error: str = "",
    ) -> None:
        """Mark a running backup complete with what was measured while it streamed."""
        self._update(
            backup_id,
            state=BackupState.COMPLETE,
            size=size,
            sha256=sha256,
            finished_at=finished_at,
            duration_s=duration_s,
            table_counts=json.dumps(dict(table_counts), sort_keys=True),
            verified=verified,
            verified_at=finished_at if verified else None,
            s3_key=s3_key,
            error=error[:2000],
        )

    def fail(self, backup_id: str, error: str) -> None:
        """Mark a backup failed (nothing of it is kept)."""
        self._update(
            backup_id,
            state=BackupState.FAILED,
            finished_at=utcnow(),
            s3_key="",
            verified=False,
            error=error[:2000],
        )

    def set_verified(self, backup_id: str, ok: bool, at: dt.datetime, error: str = "") -> None:
        self._update(backup_id, verified=ok, verified_at=at, error=error[:2000])

    def clear_s3(self, backup_id: str) -> None:
        self._update(backup_id, s3_key="")

    def mark_deleted(self, backup_id: str, at: dt.datetime) -> None:
        self._update(backup_id, state=BackupState.DELETED, deleted_at=at, s3_key="")

    def get(self, backup_id: str) -> BackupInfo | None:
        with self._sessions() as session:
            row = session.get(Backup, backup_id)
            return BackupInfo.of(row) if row is not None else None

    def listing(self, *, states: tuple[str, ...] | None = None) -> list[BackupInfo]:
        """Return backups newest first (only those in ``states`` when given)."""
        query = select(Backup).order_by(Backup.started_at.desc(), Backup.id.desc())
        if states is not None:
            query = query.where(Backup.state.in_(states))
        with self._sessions() as session:
            return [BackupInfo.of(row) for row in session.scalars(query)]

    def latest(self, kinds: tuple[str, ...]) -> BackupInfo | None:
        """Return the newest complete backup of one of ``kinds``, or None."""
        for info in self.listing(states=(BackupState.COMPLETE,)):
            if info.kind in kinds:
                return info
        return None

    def running(self) -> list[BackupInfo]:
        return self.listing(states=(BackupState.RUNNING,))


# --- the lock --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LockHolder:
    holder: str
    op_id: str
    owner: str
    acquired_at: dt.datetime
    heartbeat_at: dt.datetime
    raw_heartbeat: Any = field(default=None, compare=False, repr=False)


class LockBusy(UserError):
    """Someone else holds the lock; the message says who and since when. ``work`` names what
    the lock guards (``A backup or restore``)."""

    def __init__(
        self,
        holder: LockHolder | None,
        now: dt.datetime | None = None,
        *,
        work: str = BACKUP_WORK,
    ) -> None:
        self.holder = holder
        if holder is None:
            message = f"{work} is running right now; try again when it is done."
        else:
            now = now or utcnow()
            since = holder.acquired_at
            age = ago((now - since).total_seconds())
            message = (
                f"{work} is already running: {holder.holder}, operation "
                f"{holder.op_id or '?'}, since {since:%Y-%m-%d %H:%M:%S} UTC ({age} ago). "
                "One runs at a time; nothing was done. Try again when it is done."
            )
        super().__init__(message)


class Lease:
    """The held lock. Release it (or leave the ``with`` block) when the work is done."""

    def __init__(
        self,
        lock: DatabaseLock,
        owner: str,
        connection: Any = None,
        took_over: LockHolder | None = None,
    ) -> None:
        self._lock = lock
        self.owner = owner
        self.took_over = took_over
        self.lost = False
        self._connection = connection
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="hq-backup-lock", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._lock.heartbeat):
            try:
                if not self._lock.touch(self.owner):
                    self.lost = True
                    log.error(
                        "the %s lock was taken over while this process held it", self._lock.name
                    )
            except Exception:
                log.exception("could not refresh the %s lock's heartbeat", self._lock.name)

    def release(self) -> None:
        """Give the lock back (idempotent). Never raises, so the result of the work done under
        the lock is never replaced by a failure to tidy up: a row that cannot be deleted is
        logged, and goes stale (taken over after ``stale_after``; on PostgreSQL the advisory
        lock, which decides, ends with the session in any case)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._beat.join(timeout=5)
        try:
            self._lock.forget(self.owner)
        except Exception as exc:
            log.error(
                "could not delete the %s lock's row (%s); it goes stale by itself",
                self._lock.name,
                type(exc).__name__,
            )
        finally:
            if self._connection is not None:
                with suppress(Exception):
                    self._connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": self._lock.key}
                    )
                    self._connection.commit()
                with suppress(Exception):
                    self._connection.close()
                self._connection = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class DatabaseLock:
    """One holder at a time, across threads, processes and replicas: by default the lock of
    backups and restores; ``name`` and ``work`` make others (the deployment's change lock)."""

    def __init__(
        self,
        engine: Engine,
        *,
        name: str = LOCK_NAME,
        work: str = BACKUP_WORK,
        stale_after: float = 300.0,
        heartbeat: float = 30.0,
    ) -> None:
        self.engine = engine
        self.name = name
        self.work = work
        self.key = advisory_key(name)
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def advisory(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def holder(self) -> LockHolder | None:
        """Return who holds the lock now, or None."""
        with self._sessions() as session:
            row = session.get(BackupLock, self.name)
            if row is None:
                return None
            return LockHolder(
                holder=row.holder,
                op_id=row.op_id,
                owner=row.owner,
                acquired_at=aware(row.acquired_at),
                heartbeat_at=aware(row.heartbeat_at),
                raw_heartbeat=row.heartbeat_at,
            )

    def _insert(self, holder: str, op_id: str, owner: str) -> None:
        now = utcnow()
        with self._sessions.begin() as session:
            session.add(
                BackupLock(
                    name=self.name,
                    holder=holder[:128],
                    op_id=op_id,
                    owner=owner,
                    acquired_at=now,
                    heartbeat_at=now,
                )
            )

    def touch(self, owner: str) -> bool:
        with self._sessions.begin() as session:
            result = session.execute(
                update(BackupLock)
                .where(BackupLock.name == self.name, BackupLock.owner == owner)
                .values(heartbeat_at=utcnow())
            )
            return bool(getattr(result, "rowcount", 0))

    def forget(self, owner: str) -> None:
        with self._sessions.begin() as session:
            session.execute(
                delete(BackupLock).where(BackupLock.name == self.name, BackupLock.owner == owner)
            )

    def acquire(self, holder: str, op_id: str) -> Lease:
        """Given who asks (a label like ``alice (backup now)``) and the operation id, return the
        lease. Raise LockBusy, naming the holder and since when, when someone else has it, and
        UserError when hq-bot's database does not answer (nothing has been done then)."""
        try:
            return self._acquire(holder, op_id)
        except SQLAlchemyError as exc:  # the type only: the text may carry the database URL
            raise UserError(
                f"hq-bot's database did not answer while taking the {self.name} lock "
                f"({type(exc).__name__}); nothing was done."
            ) from None

    def _acquire(self, holder: str, op_id: str) -> Lease:
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        if self.advisory:
            return self._acquire_advisory(holder, op_id, owner)
        took_over: LockHolder | None = None
        for _attempt in range(3):
            try:
                self._insert(holder, op_id, owner)
                return Lease(self, owner, took_over=took_over)
            except IntegrityError:
                current = self.holder()
                if current is None:
                    continue
                age = (utcnow() - current.heartbeat_at).total_seconds()
                if age < self.stale_after:
                    raise LockBusy(current, work=self.work) from None
                with self._sessions.begin() as session:
                    gone = session.execute(
                        delete(BackupLock).where(
                            BackupLock.name == self.name,
                            BackupLock.owner == current.owner,
                            BackupLock.heartbeat_at == current.raw_heartbeat,
                        )
                    )
                if getattr(gone, "rowcount", 0):
                    log.warning("took over a stale %s lock of %s", self.name, current.owner)
                    took_over = current
        raise LockBusy(self.holder(), work=self.work)

    def _acquire_advisory(self, holder: str, op_id: str, owner: str) -> Lease:
        connection = self.engine.connect()
        # out of the pool: closing it ends the session, and with it the advisory lock
        connection.detach()
        try:
            got = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
            ).scalar()
            connection.commit()
            if not got:
                raise LockBusy(self.holder(), work=self.work)
            # the advisory lock is ours, so a row left behind belongs to a process that died
            previous = self.holder()
            if previous is not None:
                self.forget(previous.owner)
            self._insert(holder, op_id, owner)
        except BaseException:
            connection.close()  # closing the session releases the advisory lock too
            raise
        return Lease(self, owner, connection=connection, took_over=previous)


# --- files -----------------------------------------------------------------------------------
def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A file that appears under its final name only when complete: it is written under a
    hidden temporary name in the same folder, fsynced, renamed, and the folder fsynced. Abort
    (or an exception in the ``with`` block) removes the temporary file."""

    def __init__(self, path: Path, *, mode: int = 0o600, buffering: int = 1 << 20) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}{PARTIAL}{secrets.token_hex(4)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.tmp, flags, mode)
        self._file = os.fdopen(fd, "wb", buffering=buffering)
        self.done = False

    def write(self, data: bytes | memoryview) -> None:
        """Write all of ``data`` (an unbuffered file may take it in parts)."""
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            if not written:
                raise OSError(errno.EIO, "the file took no bytes", str(self.tmp))
            view = view[written:]

    def commit(self) -> None:
        """Make the file durable under its final name. Raise FileExistsError rather than
        replace a file that is already there."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.path.exists():
            self.abort()
            raise FileExistsError(errno.EEXIST, "already exists", str(self.path))
        os.rename(self.tmp, self.path)
        self.done = True
        try:
            fsync_dir(self.path.parent)
        except OSError as exc:  # the file's bytes are on disk; only the rename may not be yet
            log.warning("could not fsync %s after the rename (%s)", self.path.parent, exc)

    def abort(self) -> None:
        """Remove the temporary file (idempotent; never raises)."""
        if self.done:
            return
        with suppress(OSError, ValueError):
            self._file.close()
        with suppress(OSError):
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.done:
            self.abort()


def leftovers(folder: Path) -> list[Path]:
    """Return temporary files a dead backup left in ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f".db_*{PARTIAL}*") if p.is_file())


# --- one writer, readers that follow ------------------------------------------------------------
class UploadAborted(Exception):
    """Raised to a follower (the S3 client inside its read()) when the data being written is
    not whole: the writer failed."""


class GrowingFile:
    """The temporary file of a backup while one thread writes it, read at the same time by
    :class:`Follower` s (the S3 upload, the full-read check), each at its own pace. The disk is
    the buffer: a slow reader never holds back the writer (and so pg_dump), and nothing waits
    in memory. The writer publishes how much is written; :meth:`finish` lets the followers
    reach the end, :meth:`fail` makes their next read raise UploadAborted."""

    def __init__(self, path: Path) -> None:
        self.file = AtomicFile(path, buffering=0)  # unbuffered: what is written is readable
        self._cond = threading.Condition()
        self._size = 0
        self._done = False
        self._failed = ""

    @property
    def tmp(self) -> Path:
        return self.file.tmp

    def write(self, data: bytes) -> None:
        """Append ``data`` and let the followers see it. Raise OSError when writing fails."""
        self.file.write(data)
        with self._cond:
            self._size += len(data)
            self._cond.notify_all()

    def finish(self) -> None:
        """Everything is written (and committed): followers read to the end."""
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def fail(self, reason: str) -> None:
        """The data is not whole: every follower's next read raises UploadAborted."""
        with self._cond:
            self._failed = reason or "the backup failed"
            self._cond.notify_all()

    def follower(self) -> Follower:
        """Return a reader from the start of the file (it has its own file descriptor)."""
        return Follower(self, os.open(self.file.tmp, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))

    def _wait(self, position: int, size: int) -> int:
        with self._cond:
            while True:
                if self._failed:
                    raise UploadAborted(self._failed)
                ready = self._size - position
                if self._done or (size >= 0 and ready >= size):
                    return ready if size < 0 else min(ready, size)
                self._cond.wait()


class Follower:
    """Reads a :class:`GrowingFile` like a file: :meth:`read` returns exactly ``size`` bytes
    unless the file is finished (so minio never glues many small reads together), and raises
    UploadAborted once the writer failed."""

    def __init__(self, source: GrowingFile, fd: int) -> None:
        self._source = source
        self._fd = fd
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        ready = self._source._wait(self._position, size)
        parts = []
        while ready > 0:
            data = os.pread(self._fd, ready, self._position)
            if not data:
                raise UploadAborted("the backup file ended before what was written")
            parts.append(data)
            self._position += len(data)
            ready -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        with suppress(OSError):
            os.close(self._fd)


class StreamUpload:
    """Upload ``source`` to ``bucket/key`` while it is written, with minio's multipart upload
    (parts of ``part_size`` bytes, one at a time, in a thread of its own).

    minio's ``put_object`` takes the end of the stream for success and completes the upload.
    So a failure of the writer reaches it as an exception from ``read()``: then ``put_object``
    aborts the multipart upload (parts already sent are discarded) and no object appears.
    Parts go up one at a time, so the abort cannot race a part still in flight."""

    def __init__(self, client: Any, bucket: str, key: str, part_size: int, source: Any) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.part_size = part_size
        self.source = source
        self.error: BaseException | None = None
        self.etag = ""
        self._thread = threading.Thread(target=self._run, name="hq-backup-upload", daemon=True)

    def start(self) -> StreamUpload:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            result = self.client.put_object(
                self.bucket,
                self.key,
                self.source,
                length=-1,
                part_size=self.part_size,
                num_parallel_uploads=1,
                content_type="application/octet-stream",
            )
            self.etag = str(getattr(result, "etag", "") or "")
        except BaseException as exc:
            self.error = exc

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the upload to end. Raise what it raised."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the upload of {self.key} is still running")
        if self.error is not None:
            raise self.error


ABORT_RULE_ID = "hq-bot-abort-incomplete-uploads"


def ensure_bucket(client: Any, bucket: str, *, abort_after_days: int = 1) -> bool:
    """Create ``bucket`` when it does not exist, with a lifecycle rule that makes the store
    abort multipart uploads left incomplete for ``abort_after_days`` (a process killed in
    the middle of a backup cannot abort its own). Return True when it was created. A bucket
    that exists already keeps the lifecycle its owners gave it."""
    if client.bucket_exists(bucket):
        return False
    try:
        client.make_bucket(bucket)
    except Exception as exc:  # another replica may have created it a moment ago
        if getattr(exc, "code", "") in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            return False
        raise
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import AbortIncompleteMultipartUpload, LifecycleConfig, Rule

    rule = Rule(
        ENABLED,
        rule_filter=Filter(prefix=""),
        rule_id=ABORT_RULE_ID,
        abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(abort_after_days),
    )
    try:
        client.set_bucket_lifecycle(bucket, LifecycleConfig([rule]))
    except Exception as exc:  # the bucket works without it; say so in the log
        log.warning(
            "could not set the abort-incomplete-uploads rule on %s (%s)",
            bucket,
            getattr(exc, "code", "") or type(exc).__name__,
        )
    return True


def iter_file(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Yield a file's bytes in chunks."""
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            yield block
