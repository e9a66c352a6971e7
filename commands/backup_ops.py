"""The mechanics of database backups and restores (the commands are in ``commands.backups``).

A backup is one pass over ``pg_dump``'s output, never held in memory and never copied to a
temporary place first::

    pg_dump --format=custom --snapshot=S   (inside the postgres container, Docker Engine exec)
      -> [AES-256-GCM, when HQ_BACKUP_KEY is set]
      -> SHA-256 and size
      -> file:  .db_...dump.partial-xxxx in HQ_BACKUP_DIR -> fsync -> rename -> fsync folder
         read back while it grows, each at its own pace (the disk is the buffer):
         -> S3:    multipart upload (minio), aborted when anything before it fails
         -> check: host pg_restore -f /dev/null reads the whole archive (decrypting the stored
                   bytes when encrypted), so "verified" means every byte stored can be read
                   back; it runs at idle CPU priority, since pg_dump is the critical path

``S`` is a snapshot exported by a REPEATABLE READ transaction that also counts the rows of
every user table, so the counts recorded with the backup describe exactly the dumped data.

Restores and scratch restores run the host's ``pg_restore`` over TCP, with the password in the
child's environment (PGPASSWORD), never in argv: the bot reads the backup from its own disk, a
plain file can be restored with ``-j`` because it is seekable, and an encrypted one is
decrypted on the fly into pg_restore's stdin (no plaintext copy on disk). The same tool also
did the verification, so what was proven readable is what restores.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from approvals.models import BackupKind, BackupState, utcnow
from commands.infra import gateway
from commands.infra.archive import ArchiveError, Decryptor, Encryptor, parse_key
from commands.infra.backup_store import (
    AtomicFile,
    BackupInfo,
    Catalogue,
    DatabaseLock,
    GrowingFile,
    Lease,
    StreamUpload,
    UploadAborted,
    ensure_bucket,
    leftovers,
)
from commands.infra.gateway import CommandFailed, InfraError, tail_text
from commands.redact import default_redactor
from commands.spec import Context, Progress, UserError

log = logging.getLogger(__name__)

S3_PREFIX = "db/"
BACKUP_ID = re.compile(r"^b-\d{8}-\d{6}-[0-9a-f]{4}$")
S3_TIMEOUT = 120.0
BLOCK = 1024 * 1024
MAX_PARTS = 9000  # of the 10,000 S3 allows: room for a dump a little bigger than the database
DUMP_ARGV = (
    "pg_dump",
    "--format=custom",
    "--no-password",
    "-U",
    "$DB_USER",
    "-d",
    "$DB_NAME",
    "--snapshot=$SNAPSHOT",
)
TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (
    SELECT 1 FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


# --- small pure helpers ------------------------------------------------------------------------
def fill(argv: Sequence[str], values: Mapping[str, str]) -> tuple[str, ...]:
    """Given a planned argv with ``$NAME`` placeholders, return it with the values put in."""
    out = []
    for word in argv:
        for name, value in values.items():
            word = word.replace(f"${name}", value)
        out.append(word)
    return tuple(out)


def verify_argv(settings: Any) -> tuple[str, ...]:
    """The full-read check: pg_restore reads the archive from stdin and writes the SQL it
    would run to /dev/null, so every data block is read and decompressed."""
    return (settings.hq_pg_restore, "--file=/dev/null")


def _server(settings: Any) -> tuple[str, ...]:
    return (
        "--host",
        str(settings.hq_postgres_host),
        "--port",
        str(settings.hq_postgres_port),
        "--username",
        "$DB_USER",
        "--no-password",
    )


def restore_argv(settings: Any, *, path: str | None, jobs: int) -> tuple[str, ...]:
    """Given settings, the file (None: stdin) and the jobs, return the pg_restore argv that
    replaces the deployment's database. One job runs in a single transaction (all or nothing);
    more jobs need a file and leave a partial restore when they fail."""
    if jobs > 1 and path is None:
        raise ValueError("parallel restore needs a file")
    argv = [settings.hq_pg_restore, "--clean", "--if-exists", "--no-owner", "--exit-on-error"]
    argv += ["--single-transaction"] if jobs == 1 else [f"--jobs={jobs}"]
    argv += [*_server(settings), "--dbname", "$DB_NAME"]
    return (*argv, *([path] if path else []))


def scratch_argv(settings: Any, *, path: str | None, database: str) -> tuple[str, ...]:
    """Given settings, the file (None: stdin) and a scratch database, return the pg_restore
    argv of a restore test."""
    argv = [settings.hq_pg_restore, "--no-owner", "--exit-on-error", "--single-transaction"]
    argv += [*_server(settings), "--dbname", database]
    return (*argv, *([path] if path else []))


def part_size(minimum_mb: int, database_size: int) -> int:
    """Given HQ_BACKUP_PART_MB and the database's size, return the S3 part size in bytes:
    the minimum, or more when the dump (never much bigger than the database) might otherwise
    need more than 9,000 of the 10,000 parts S3 allows."""
    mib = 1024 * 1024
    needed = -(-database_size // (MAX_PARTS * mib))  # ceil, in MiB
    return max(minimum_mb, min(needed, 5 * 1024)) * mib


def new_backup_id(started: dt.datetime) -> str:
    return f"b-{started:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def file_name(started: dt.datetime, encrypted: bool, number: int = 1) -> str:
    """Given the start time, return ``db_YYYYmmdd_HHMMSS.dump`` (``.enc`` appended when
    encrypted; ``_N`` before the suffix for the N-th backup of the same second)."""
    extra = "" if number == 1 else f"_{number}"
    return f"db_{started:%Y%m%d_%H%M%S}{extra}.dump" + (".enc" if encrypted else "")


def backup_folder(settings: Any) -> Path:
    return Path(settings.hq_backup_dir).absolute()


def backup_key(settings: Any) -> bytes | None:
    """Return the encryption key of HQ_BACKUP_KEY (registered for redaction), or None."""
    secret = settings.hq_backup_key
    if secret is None:
        return None
    text = secret.get_secret_value()
    default_redactor().add([text])
    try:
        return parse_key(text)
    except ValueError as exc:
        raise UserError(f"{exc}.") from None


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def describe(exc: BaseException) -> str:
    """Given an exception, return a sentence safe to show (never raw exception text)."""
    if isinstance(exc, UserError):
        return exc.message.rstrip(".")
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return type(exc).__name__


def catalogue(ctx: Context) -> Catalogue:
    engine = getattr(ctx.governance, "engine", None)
    if engine is None:
        raise UserError("hq-bot's own database is not available, so backups cannot be recorded.")
    return Catalogue(engine)


# --- the lock ------------------------------------------------------------------------------------
def acquire(ctx: Context, what: str) -> Lease:
    """Take the one-backup-or-restore-at-a-time lock for ``what`` (``backup now``, ``restore``).
    Tidy what a dead holder left: running rows become failed, their files and partial files
    are removed. Raise LockBusy naming the holder when it is taken."""
    engine = ctx.governance.engine
    lease = DatabaseLock(engine).acquire(f"{ctx.actor.label} ({what})", ctx.operation_id)
    try:
        _reap(ctx, catalogue(ctx))
    except Exception:
        log.exception("could not tidy after an interrupted backup")
    return lease


def _reap(ctx: Context, cat: Catalogue) -> None:
    for info in cat.running():
        Path(info.path).unlink(missing_ok=True)
        cat.fail(info.id, "interrupted: hq-bot stopped while the backup ran")
        log.warning("marked interrupted backup %s failed", info.id)
    for path in leftovers(backup_folder(ctx.settings)):
        path.unlink(missing_ok=True)
        log.warning("removed %s, left by an interrupted backup", path)


# --- consistent row counts ------------------------------------------------------------------
def count_tables(conn: Any) -> dict[str, int]:
    """Given an open connection, return ``schema.table`` -> row count of every user table."""
    counts: dict[str, int] = {}
    for schema, table in conn.execute(TABLES_SQL).fetchall():
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        counts[f"{schema}.{table}"] = int(conn.execute(query).fetchone()[0])
    return counts


@dataclass
class Snapshot:
    """An open REPEATABLE READ transaction and the id of the snapshot it exported."""

    conn: Any
    id: str

    def count(self) -> dict[str, int]:
        try:
            return count_tables(self.conn)
        except psycopg.Error as exc:
            raise InfraError(
                f"Counting the rows of each table failed: {_pg_reason(exc)}."
            ) from None

    def database_size(self) -> int:
        row = self.conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


def _pg_reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _statement_timeout(conn: Any, seconds: float) -> None:
    conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(seconds * 1000)}",))


@contextmanager
def exported_snapshot(pg: Any, timeout: float) -> Iterator[Snapshot]:
    """Open a REPEATABLE READ, READ ONLY transaction on the deployment's database and yield
    its exported snapshot. pg_dump ``--snapshot`` sees exactly the same data while this is
    open."""
    with pg.connect(autocommit=True) as conn:
        _statement_timeout(conn, timeout)
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot = str(conn.execute("SELECT pg_export_snapshot()").fetchone()[0])
        try:
            yield Snapshot(conn, snapshot)
        finally:
            with suppress(Exception):
                conn.rollback()


# --- taking a backup -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Taken:
    """A finished backup, with what did not go to plan (empty when all did)."""

    info: BackupInfo
    upload_error: str = ""
    verify_error: str = ""

    @property
    def clean(self) -> bool:
        return not self.upload_error and not self.verify_error


class BackupFailed(UserError):
    """The backup failed and nothing of it was kept; the message says why and what was
    cleaned up."""


def s3_client(ctx: Context) -> Any:
    """A minio client for backups (longer timeouts than the health checks use)."""
    from commands.infra.s3 import S3

    settings = ctx.settings
    store = S3(settings.hq_s3_endpoint, settings.hq_backup_bucket, ctx.infra.env.read, S3_TIMEOUT)
    return store.client


def take_backup(ctx: Context, *, kind: str, progress: Progress) -> Taken:
    """Dump the deployment's database into HQ_BACKUP_DIR (and the S3 bucket), record it in
    the catalogue and check it. The caller holds the lock. Raise BackupFailed (after removing
    every trace but the failed catalogue row) when the dump fails."""
    settings = ctx.settings
    cat = catalogue(ctx)
    key = backup_key(settings)
    folder = backup_folder(settings)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the backup folder {folder}: {describe(exc)}.") from None
    user, password, database = ctx.infra.postgres.credentials()
    started = utcnow()
    clock = time.monotonic()
    number = 1
    while (folder / file_name(started, key is not None, number)).exists():
        number += 1
    path = folder / file_name(started, key is not None, number)
    bucket = str(settings.hq_backup_bucket or "")
    info = BackupInfo(
        id=new_backup_id(started),
        kind=kind,
        state=BackupState.RUNNING,
        file_name=path.name,
        path=str(path),
        size=0,
        sha256="",
        encrypted=key is not None,
        s3_bucket=bucket,
        s3_key=f"{S3_PREFIX}{path.name}" if bucket else "",
        started_at=started,
        finished_at=None,
        duration_s=0.0,
        table_counts={},
        verified=False,
        verified_at=None,
        op_id=ctx.operation_id,
        requested_by=ctx.actor.label,
    )
    cat.start(info)
    progress(f"backup {info.id}: pg_dump of `{database}` into {path.name}")
    try:
        dump = Dump(ctx, info, key, progress)
        measured = dump.run({"DB_USER": user, "DB_NAME": database}, password)
    except BaseException as exc:
        cat.fail(info.id, describe(exc))
        raise
    finished = utcnow()
    cat.complete(
        info.id,
        size=measured.size,
        sha256=measured.sha256,
        finished_at=finished,
        duration_s=time.monotonic() - clock,
        table_counts=measured.counts,
        verified=not measured.verify_error,
        s3_key=info.s3_key if bucket and not measured.upload_error else "",
        error="; ".join(e for e in (measured.upload_error, measured.verify_error) if e),
    )
    done = cat.get(info.id)
    assert done is not None
    return Taken(done, measured.upload_error, measured.verify_error)


@dataclass(frozen=True)
class Measured:
    size: int
    sha256: str
    counts: Mapping[str, int]
    upload_error: str
    verify_error: str


class Dump:
    """One pass of pg_dump's output: hashed, counted and written to the (growing) file by this
    thread; the S3 upload and the full-read check follow the file from their own threads."""

    def __init__(self, ctx: Context, info: BackupInfo, key: bytes | None, progress: Progress):
        self.ctx = ctx
        self.settings = ctx.settings
        self.info = info
        self.key = key
        self.progress = progress
        self.sha = hashlib.sha256()
        self.size = 0
        self.upload: StreamUpload | None = None
        self.upload_error = ""
        self.verify_error = ""
        self.checker: threading.Thread | None = None
        self.stderr: deque[bytes] = deque(maxlen=32)
        self.marks: dict[str, float] = {}  # phase -> seconds since the start, for the log
        self._t0 = time.monotonic()

    def _mark(self, phase: str) -> None:
        self.marks[phase] = round(time.monotonic() - self._t0, 2)

    def _store(self, data: bytes) -> None:
        """Bytes as stored (encrypted when a key is set): hash, count, write."""
        self.sha.update(data)
        self.size += len(data)
        try:
            self.file.write(data)
        except OSError as exc:
            raise UserError(f"writing {self.file.tmp} failed: {describe(exc)}") from None

    def _start_upload(self, database_size: int) -> None:
        bucket, key = self.info.s3_bucket, self.info.s3_key
        if not bucket:
            return
        try:
            client = s3_client(self.ctx)
            if ensure_bucket(client, bucket):
                self.progress(f"created the S3 bucket {bucket}")
            part = part_size(int(self.settings.hq_backup_part_mb), database_size)
            follower = self.file.follower()
            self.upload = StreamUpload(client, bucket, key, part, follower).start()
        except Exception as exc:
            self.upload_error = f"the S3 upload could not start ({_s3_reason(exc)})"
            self.progress(f"{self.upload_error}; the backup goes to disk only")

    def _start_check(self) -> None:
        try:
            # pg_dump is the critical path: the check takes only CPU nothing else wants, and
            # catches up after the dump if it must (it reads the file, so it never holds it up)
            program = gateway.Feed(
                verify_argv(self.settings),
                timeout=float(self.settings.hq_backup_timeout),
                idle=True,
            )
        except CommandFailed as exc:
            self.verify_error = f"the host's pg_restore could not be started ({exc.message})"
            return
        follower = self.file.follower()
        self.checker = threading.Thread(
            target=self._check, args=(program, follower), name="hq-backup-check", daemon=True
        )
        self.checker.start()

    def _check(self, program: gateway.Feed, follower: Any) -> None:
        """Feed the file, as it grows, to pg_restore -f /dev/null (decrypted when encrypted)."""
        decryptor = Decryptor(self.key) if self.key else None
        try:
            while block := follower.read(BLOCK):
                for part in decryptor.update(block) if decryptor else (block,):
                    program.write(part)
            for part in decryptor.finish() if decryptor else ():
                program.write(part)
            program.close()
            self._mark("check done")
        except UploadAborted:
            pass  # the dump failed; the failure says so
        except ArchiveError as exc:
            self.verify_error = f"the stored bytes do not decrypt: {exc.message}"
        except CommandFailed as exc:
            self.verify_error = f"the full read with pg_restore failed: {exc.stderr_tail}"
        except Exception as exc:
            log.exception("the full-read check failed")
            self.verify_error = f"the full-read check failed ({describe(exc)})"
        finally:
            program.kill()
            follower.close()

    def run(self, names: Mapping[str, str], password: str) -> Measured:
        settings = self.settings
        timeout = float(settings.hq_backup_timeout)
        deadline = time.monotonic() + timeout
        encryptor = Encryptor(self.key) if self.key else None
        try:
            self.file = GrowingFile(Path(self.info.path))
        except OSError as exc:
            raise BackupFailed(
                f"The backup {self.info.id} failed: cannot create a file in "
                f"{Path(self.info.path).parent}: {describe(exc)}."
            ) from None
        stream: Any = None
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hq-backup-count")
        try:
            with exported_snapshot(self.ctx.infra.postgres, timeout) as snapshot:
                self._start_upload(snapshot.database_size())
                self._start_check()
                counting = pool.submit(snapshot.count)
                argv = fill(DUMP_ARGV, {**names, "SNAPSHOT": snapshot.id})
                stream = self.ctx.infra.docker.exec_stream(
                    settings.hq_service_postgres,
                    argv,
                    environment={"PGPASSWORD": password},
                    on_stderr=self.stderr.append,
                )
                self._mark("pg_dump started")
                try:
                    counts = self._pump(stream, encryptor, deadline, timeout, counting)
                    self._mark("pg_dump done")
                except BaseException:
                    if not counting.done():
                        with suppress(Exception):
                            snapshot.conn.cancel()
                    raise
            # durable under its final name before the followers may see the end: a file that
            # cannot be committed must still abort the upload
            self.file.file.commit()
            self._mark("file durable")
            self.file.finish()
            if self.checker is not None:
                self.checker.join()
            if self.upload is not None:
                try:
                    self.upload.wait()
                    self._mark("upload done")
                except Exception as exc:
                    self.upload_error = f"the S3 upload failed ({_s3_reason(exc)})"
            log.info("backup %s phases (s): %s", self.info.id, self.marks)
        except BaseException as exc:
            if not isinstance(exc, UserError):
                log.exception("backup %s failed", self.info.id)
            self._clean_up(exc)
            raise BackupFailed(self._failure(exc)) from (
                None if isinstance(exc, UserError) else exc
            )
        finally:
            if stream is not None:
                stream.close()
            pool.shutdown(wait=True, cancel_futures=True)
        return Measured(
            self.size, self.sha.hexdigest(), counts, self.upload_error, self.verify_error
        )

    def _pump(
        self,
        stream: Any,
        encryptor: Encryptor | None,
        deadline: float,
        timeout: float,
        counting: Any,
    ) -> dict[str, int]:
        pending = bytearray()  # the engine's frames are ~10 KB: write 1 MiB blocks instead
        try:
            for chunk in stream:
                if encryptor is not None:
                    for sealed in encryptor.update(chunk):
                        self._store(sealed)
                else:
                    pending += chunk
                    if len(pending) >= BLOCK:
                        self._store(bytes(pending))
                        pending.clear()
                if time.monotonic() > deadline:
                    raise UserError(f"pg_dump ran longer than HQ_BACKUP_TIMEOUT ({timeout:g} s)")
        except CommandFailed as exc:
            raise self._dump_failed(exc) from None
        except TimeoutError:
            raise UserError(
                "pg_dump sent nothing for too long (is a table locked by another session?)"
            ) from None
        except OSError as exc:  # the socket to the Docker Engine (file errors are UserErrors)
            raise UserError(
                f"the Docker Engine connection broke during pg_dump ({describe(exc)})"
            ) from None
        if encryptor is not None:
            for sealed in encryptor.finish():
                self._store(sealed)
        elif pending:
            self._store(bytes(pending))
        counts: dict[str, int] = counting.result()
        return counts

    def _dump_failed(self, exc: CommandFailed) -> UserError:
        err = pg_error(b"".join(self.stderr))
        if exc.returncode == -1:
            detail = "its output ended early and its exit status is unknown (did PostgreSQL stop?)"
        else:
            detail = f"it exited with code {exc.returncode}"
        return UserError(f"pg_dump failed: {detail}" + (f": {err}" if err else ""))

    def _clean_up(self, exc: BaseException) -> None:
        reason = describe(exc)
        self.file.fail(reason)  # the upload's next read raises: minio aborts the upload
        if self.checker is not None:
            self.checker.join(timeout=30)
        if self.upload is not None:
            with suppress(Exception):
                self.upload.wait(timeout=S3_TIMEOUT)
            error = self.upload.error
            if error is None or not isinstance(error, UploadAborted):
                self.upload_error = (
                    f"aborting the S3 multipart upload of {self.info.s3_key} may have failed "
                    f"({_s3_reason(error) if error else 'it did not end'}); check the bucket "
                    "for a pending upload"
                )
        self.file.file.abort()

    def _failure(self, exc: BaseException) -> str:
        kept = "the partial file was removed"
        if self.upload is not None:
            if self.upload_error:
                kept += f"; {self.upload_error}"
            else:
                kept += ", the S3 multipart upload was aborted (no object was stored)"
        return f"The backup {self.info.id} failed: {describe(exc)}. Nothing was kept: {kept}."


def pg_error(stderr: bytes, limit: int = 400) -> str:
    """Given a PostgreSQL tool's stderr, return its error lines (``error:``, ``FATAL``,
    ``detail: Error message``), else its tail, redacted and on one line."""
    text = stderr.decode("utf-8", errors="replace")
    keep = [
        line.strip()
        for line in text.splitlines()
        if re.search(r"error:|FATAL|detail: Error message", line)
    ]
    return tail_text("; ".join(keep) if keep else text, limit)


def _s3_reason(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if code:
        return str(code)
    if isinstance(exc, UserError):
        return exc.message.rstrip(".")
    return type(exc).__name__


# --- reading a backup back -------------------------------------------------------------------
def missing_file(info: BackupInfo) -> str:
    """Say that the file of ``info`` is missing, and how to get it back when it can be."""
    message = f"The file of {info.id} ({info.path}) is missing."
    if info.s3_key:
        message += (
            f" Its S3 copy s3://{info.s3_bucket}/{info.s3_key} can bring it back: "
            f"`/hq backup fetch {info.id}`."
        )
    return message


@dataclass(frozen=True)
class Checked:
    size: int
    sha256: str
    seconds: float


def check_archive(settings: Any, info: BackupInfo) -> Checked:
    """Read the whole file of ``info``: re-hash it and compare with the catalogue, and have
    pg_restore read every block of the archive (decrypted on the fly when encrypted). Return
    what was measured. Raise UserError saying what is wrong."""
    path = Path(info.path)
    if not path.is_file():
        raise UserError(missing_file(info))
    size = path.stat().st_size
    if size != info.size:
        raise UserError(
            f"The file of {info.id} has {size} bytes; the catalogue recorded {info.size}: "
            "it was truncated or replaced."
        )
    key = backup_key(settings) if info.encrypted else None
    if info.encrypted and key is None:
        raise UserError(f"{info.id} is encrypted and HQ_BACKUP_KEY is not set.")
    started = time.monotonic()
    sha = hashlib.sha256()
    decryptor = Decryptor(key) if key else None
    broken = ""
    timeout = float(settings.hq_backup_timeout)
    with gateway.Feed(verify_argv(settings), timeout=timeout) as verifier:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                sha.update(block)
                if broken:
                    continue
                try:
                    parts = decryptor.update(block) if decryptor else [block]
                    for part in parts:
                        verifier.write(part)
                except ArchiveError as exc:
                    broken = exc.message
        digest = sha.hexdigest()
        if digest != info.sha256:
            raise UserError(
                f"The checksum of {info.id} does not match the catalogue (sha256 "
                f"{digest[:12]}..., expected {info.sha256[:12]}...): the file is corrupted."
            )
        if decryptor is not None and not broken:
            try:
                for part in decryptor.finish():
                    verifier.write(part)
            except ArchiveError as exc:
                broken = exc.message
        if broken:
            raise UserError(broken)
        try:
            verifier.close()
        except CommandFailed as exc:
            raise UserError(
                f"pg_restore could not read the whole archive of {info.id}: {exc.stderr_tail}"
            ) from None
    return Checked(size, digest, time.monotonic() - started)


def s3_chunks(ctx: Context, info: BackupInfo) -> Iterator[bytes]:
    """Yield the bytes of the S3 copy of ``info`` as stored, streamed in 1 MiB pieces. Raise
    UserError when there is no copy, or it cannot be read."""
    if not info.s3_key or not info.s3_bucket:
        raise UserError(f"{info.id} has no S3 copy.")
    where = f"s3://{info.s3_bucket}/{info.s3_key}"
    try:
        response = s3_client(ctx).get_object(info.s3_bucket, info.s3_key)
    except Exception as exc:
        raise UserError(f"The S3 copy {where} cannot be read ({_s3_reason(exc)}).") from None
    try:
        yield from response.stream(BLOCK)
    except Exception as exc:
        raise UserError(f"Reading the S3 copy {where} broke off ({_s3_reason(exc)}).") from None
    finally:
        response.close()
        response.release_conn()


def _compare_copy(info: BackupInfo, size: int, digest: str) -> None:
    if size != info.size:
        raise UserError(
            f"The S3 copy of {info.id} has {size} bytes; the catalogue recorded {info.size}: "
            "it was truncated or replaced."
        )
    if digest != info.sha256:
        raise UserError(
            f"The checksum of the S3 copy of {info.id} does not match the catalogue (sha256 "
            f"{digest[:12]}..., expected {info.sha256[:12]}...): it is corrupted."
        )


def check_s3_copy(ctx: Context, info: BackupInfo) -> Checked:
    """Re-hash the S3 copy of ``info`` (streamed, nothing written) and compare its size and
    SHA-256 with the catalogue: equal bytes to the file pg_restore read in full. Raise
    UserError saying what is wrong."""
    started = time.monotonic()
    sha = hashlib.sha256()
    size = 0
    for block in s3_chunks(ctx, info):
        sha.update(block)
        size += len(block)
    _compare_copy(info, size, sha.hexdigest())
    return Checked(size, sha.hexdigest(), time.monotonic() - started)


def fetch_s3_copy(ctx: Context, info: BackupInfo) -> Checked:
    """Bring the S3 copy of ``info`` back to its place on disk: streamed into a temporary file
    beside it, hashed on the way, and renamed into place only when size and SHA-256 equal the
    catalogue's (nothing is left behind otherwise). The caller holds the backup lock. Raise
    UserError saying what is wrong."""
    path = Path(info.path)
    if path.exists():
        raise UserError(f"The file of {info.id} is already on disk ({path}).")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = AtomicFile(path)
    except OSError as exc:
        raise UserError(f"Cannot write into {path.parent}: {describe(exc)}.") from None
    started = time.monotonic()
    sha = hashlib.sha256()
    size = 0
    with target:
        try:
            for block in s3_chunks(ctx, info):
                sha.update(block)
                size += len(block)
                target.write(block)
            _compare_copy(info, size, sha.hexdigest())
            target.commit()
        except OSError as exc:
            raise UserError(f"Writing {path} failed: {describe(exc)}.") from None
    return Checked(size, sha.hexdigest(), time.monotonic() - started)


def stored_chunks(settings: Any, info: BackupInfo) -> Iterator[bytes]:
    """Yield the archive of ``info`` as pg_restore must read it (decrypted when encrypted)."""
    path = Path(info.path)
    with open(path, "rb") as handle:
        if not info.encrypted:
            while block := handle.read(1 << 20):
                yield block
            return
        key = backup_key(settings)
        if key is None:
            raise UserError(f"{info.id} is encrypted and HQ_BACKUP_KEY is not set.")
        decryptor = Decryptor(key)
        while block := handle.read(1 << 20):
            yield from decryptor.update(block)
        yield from decryptor.finish()


def run_pg_restore(
    settings: Any,
    argv: Sequence[str],
    info: BackupInfo,
    password: str,
    *,
    on_stdin: bool,
) -> gateway.Completed:
    """Run a pg_restore argv with the password in its environment; feed it the (decrypted)
    archive on stdin when ``on_stdin``. Raise CommandFailed when it fails."""
    env = {"PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
    timeout = float(settings.hq_backup_timeout)
    if on_stdin:
        return gateway.feed(argv, stored_chunks(settings, info), timeout=timeout, env=env)
    return gateway.run(argv, timeout=timeout, env=env)


def restore_test(
    ctx: Context, info: BackupInfo, progress: Progress
) -> tuple[dict[str, int], list[str]]:
    """Restore ``info`` into a scratch database ``hq_restore_test_<random>`` on the
    deployment's server, count every table and compare with the counts recorded at backup
    time. The scratch database is dropped in every case. Return (counts, differences)."""
    settings = ctx.settings
    pg = ctx.infra.postgres
    user, password, _database = pg.credentials()
    scratch = f"hq_restore_test_{secrets.token_hex(4)}"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    progress(f"created the scratch database {scratch}")
    try:
        on_stdin = info.encrypted
        argv = fill(
            scratch_argv(settings, path=None if on_stdin else info.path, database=scratch),
            {"DB_USER": user},
        )
        try:
            run_pg_restore(settings, argv, info, password, on_stdin=on_stdin)
        except CommandFailed as exc:
            raise UserError(
                f"The restore test of {info.id} failed: pg_restore into {scratch}: "
                f"{exc.stderr_tail or f'exit code {exc.returncode}'}"
            ) from None
        progress(f"restored {info.id} into {scratch}")
        with pg.connect(dbname=scratch) as conn:
            _statement_timeout(conn, float(settings.hq_backup_timeout))
            counts = count_tables(conn)
    finally:
        with pg.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch))
            )
        progress(f"dropped {scratch}")
    return counts, compare_counts(info.table_counts, counts)


def compare_counts(expected: Mapping[str, int], actual: Mapping[str, int]) -> list[str]:
    """Given the counts recorded at backup time and those found, return the differences as
    sentences (empty when they agree)."""
    out = []
    for table in sorted(set(expected) | set(actual)):
        if table not in actual:
            out.append(f"{table}: missing after the restore (had {expected[table]} rows)")
        elif table not in expected:
            out.append(f"{table}: not in the recorded counts ({actual[table]} rows)")
        elif expected[table] != actual[table]:
            out.append(f"{table}: {actual[table]} rows, expected {expected[table]}")
    return out


def wait_backend_healthy(
    ctx: Context, limit: float, sleep: Callable[[float], None] = time.sleep
) -> tuple[bool, str]:
    """Poll the backend's /health until it answers 200 with status ok, or ``limit`` seconds
    pass. Return (healthy, what it last said)."""
    url = ctx.settings.hq_backend_url + "/health"
    deadline = time.monotonic() + limit
    last = "no answer yet"
    while True:
        try:
            resp = ctx.infra.http.get(url)
            status = ""
            with suppress(UserError):
                body = resp.json()
                status = str(body.get("status", "")) if isinstance(body, dict) else ""
            if resp.status == 200 and status.lower() in {"ok", "healthy", "pass", "up"}:
                return True, f"HTTP 200, status {status}"
            last = f"HTTP {resp.status}" + (f", status {status}" if status else "")
        except UserError as exc:
            last = exc.message
        if time.monotonic() >= deadline:
            return False, last
        sleep(1.0)


# what `latest` means: the newest of these (a safety backup is named by its id)
LATEST_KINDS = (BackupKind.MANUAL, BackupKind.SCHEDULED)
