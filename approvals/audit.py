"""The tamper-evident audit trail: an append-only, HMAC-signed hash chain in ``audit_events``.

Row ``n`` stores ``hash = HMAC-SHA256(key, canonical(fields))`` in hex, where ``fields`` are the
row's ``seq, at, kind, actor, op_id, request_id, command, data, prev_hash`` (``data`` is the
stored JSON text, ``at`` ISO 8601 UTC) and ``prev_hash`` is row ``n-1``'s hash (64 zeros for
row 1). So a JSONL export line without its ``hash`` key is exactly the signed object.

Writers serialise on the database (PostgreSQL: a transaction-scoped advisory lock; SQLite:
``BEGIN IMMEDIATE``), so threads, processes and replicas extend one chain and never fork it;
the primary key on ``seq`` is a second guard. A row that cannot be written raises
:class:`AuditError` and the caller must not run the action (fail closed).

``verify`` detects changed, deleted, inserted and reordered rows, but not the removal of the
newest rows (there is no later row to notice): compare the count or last hash with a copy
kept elsewhere (e.g. a posted digest) for that.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO, cast

from sqlalchemy import (
    Connection,
    Engine,
    String,
    Table,
    func,
    insert,
    select,
    text,
    type_coerce,
)
from sqlalchemy.engine import make_url

from approvals.models import AuditEvent
from bot.settings import Settings, SettingsError
from commands.redact import Redactor, default_redactor

log = logging.getLogger(__name__)
AUDIT_TABLE = cast(Table, AuditEvent.__table__)

GENESIS = "0" * 64
LOCK_ID = 0x68712D6175646974  # "hq-audit": the advisory lock every writer takes
LOCK_TIMEOUT = "30s"
BATCH = 500  # rows per query when streaming (verify, export)
MAX_RECENT = 200
COLUMNS = ("seq", "at", "kind", "actor", "op_id", "request_id", "command", "data", "prev_hash")
EXPORT_COLUMNS = (*COLUMNS, "hash")
_LIMITS = {"kind": 64, "actor": 128, "op_id": 64, "request_id": 64, "command": 128}


class AuditError(Exception):
    """An audit row could not be written or read; the action it covers must not run."""


@dataclass(frozen=True)
class Verification:
    """Outcome of :meth:`AuditTrail.verify`."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str


@dataclass(frozen=True)
class AuditRecord:
    """One audit row as read back (``at`` is timezone-aware UTC, ``data`` the JSON text)."""

    seq: int
    at: dt.datetime
    kind: str
    actor: str
    op_id: str
    request_id: str
    command: str
    data: str
    prev_hash: str
    hash: str

    def fields(self) -> dict[str, Any]:
        """Return the signed fields (every column but ``hash``)."""
        return {name: getattr(self, name) for name in COLUMNS}

    def payload(self) -> dict[str, Any]:
        """Given the row, return its ``data`` parsed. Raise ValueError if it is not JSON."""
        value = json.loads(self.data)
        if not isinstance(value, dict):
            raise ValueError("data is not a JSON object")
        return value


def _iso(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def canonical(fields: Mapping[str, Any]) -> bytes:
    """Given a mapping, return its canonical JSON (sorted keys, no spaces, UTF-8; datetimes as
    ISO 8601 UTC with microseconds, naive ones taken as UTC). Raise TypeError or ValueError if
    a value is not JSON (or is NaN/infinite)."""
    return json.dumps(
        fields,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    ).encode("utf-8")


def sign(key: bytes, fields: Mapping[str, Any]) -> str:
    """Given the key and a row's signed fields, return the row's hash (hex HMAC-SHA256)."""
    return hmac.new(key, canonical(fields), hashlib.sha256).hexdigest()


def _scrub(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(str(k)): _scrub(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, redact) for v in value]
    return value


def _utc(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise ValueError("not a timestamp")
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _failure(action: str, exc: BaseException, redact: Redactor) -> AuditError:
    # The driver's text may carry SQL, values or a URL: log it redacted, keep it out of the error.
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    log.warning("audit: %s failed: %s", action, redact(f"{type(exc).__name__}: {detail}"))
    return AuditError(f"audit trail: {action} failed ({type(exc).__name__})")


# ``at`` is read untyped so a tampered value is reported as a bad row, not a crash.
_ROW = select(
    AuditEvent.seq,
    type_coerce(AuditEvent.at, String).label("at"),
    AuditEvent.kind,
    AuditEvent.actor,
    AuditEvent.op_id,
    AuditEvent.request_id,
    AuditEvent.command,
    AuditEvent.data,
    AuditEvent.prev_hash,
    AuditEvent.hash,
)


@dataclass
class _Slot:
    """One queued event and what became of it."""

    row: dict[str, Any]
    also: Sequence[tuple[Any, Mapping[str, Any]]] = ()
    done: bool = False
    error: AuditError | None = None


class AuditTrail:
    """Append to, read, verify and export the audit chain. Thread-safe; several processes or
    replicas may share one database."""

    def __init__(self, engine: Engine, key: bytes, redactor: Redactor | None = None) -> None:
        """Given an engine (migrated), the HMAC key and a redactor (default: the process-wide
        one, which learns the key), return a trail. Raise ValueError if the key is empty."""
        if not key:
            raise ValueError("the audit key is empty")
        self._engine = engine
        self._key = key
        self._redact = redactor if redactor is not None else default_redactor()
        self._redact.add([key.hex()])
        with suppress(UnicodeDecodeError):
            self._redact.add([key.decode("utf-8")])
        self._lock = threading.Lock()  # the writer lock (one batch at a time)
        self._queue_lock = threading.Lock()
        self._queue: list[_Slot] = []
        self._dialect = engine.dialect.name

    # --- writing ---------------------------------------------------------------------------

    def append(
        self,
        kind: str,
        *,
        actor: str = "",
        op_id: str = "",
        request_id: str = "",
        command: str = "",
        data: Mapping[str, Any] | None = None,
        also: Sequence[tuple[Any, Mapping[str, Any]]] = (),
    ) -> int:
        """Given an event, redact it, sign it onto the chain and return its seq. ``also`` are
        (table, values) rows inserted in the same transaction (the operation an event is
        about), so both are written or neither. Raise AuditError if it cannot be written (then
        do not run the action)."""
        try:
            strings = {
                "kind": kind,
                "actor": actor,
                "op_id": op_id,
                "request_id": request_id,
                "command": command,
            }
            row: dict[str, Any] = {
                name: self._redact(str(value))[: _LIMITS[name]] for name, value in strings.items()
            }
            if not row["kind"]:
                raise ValueError("kind is empty")
            row["data"] = canonical(_scrub(dict(data or {}), self._redact)).decode("utf-8")
        except Exception as exc:
            raise _failure("recording an event", exc, self._redact) from None
        # Group commit: the event joins a queue; whichever waiting thread gets the writer lock
        # writes every queued event in one transaction (chained in order) and commits once.
        # Under load that is one commit per burst instead of per event, and no lock convoy.
        slot = _Slot(row, also)
        with self._queue_lock:
            self._queue.append(slot)
        with self._lock:
            if not slot.done:
                self._write_queued()
        if slot.error is not None:
            raise AuditError(str(slot.error)) from None
        return int(row["seq"])

    def _write_queued(self) -> None:
        """Write every queued event in one chained transaction; mark each slot done."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            with self._engine.connect() as conn, self._chain_lock(conn):
                last = conn.execute(
                    select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
                ).first()
                seq = 0 if last is None else int(last.seq)
                prev = GENESIS if last is None else str(last.hash)
                for slot in batch:
                    for table, values in slot.also:
                        # Core table and bound parameters: the statement stays cached.
                        conn.execute(insert(getattr(table, "__table__", table)), [dict(values)])
                rows = []
                for slot in batch:
                    seq += 1
                    row = slot.row
                    row["seq"] = seq
                    row["prev_hash"] = prev
                    row["at"] = dt.datetime.now(dt.UTC)
                    row["hash"] = prev = sign(self._key, row)
                    rows.append(row)
                conn.execute(insert(AUDIT_TABLE), rows)
        except Exception as exc:
            error = _failure("recording an event", exc, self._redact)
            for slot in batch:
                slot.error = error
        for slot in batch:
            slot.done = True

    @contextmanager
    def _chain_lock(self, conn: Connection) -> Iterator[None]:
        """Given a fresh connection, run the block in a transaction that holds the chain's
        writer lock (across processes) and commit it; roll back on error."""
        if self._dialect == "sqlite":
            # Take the write lock at BEGIN: pysqlite's own implicit BEGIN is deferred, which
            # would let two processes read the same last row. AUTOCOMMIT turns it off for this
            # checkout only (SQLAlchemy restores it when the connection returns to the pool).
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
            return
        if self._dialect == "postgresql":
            # READ COMMITTED: each statement sees rows committed before it, so the read after
            # the lock sees the previous holder's row (the lock is freed only after its commit).
            conn.execution_options(isolation_level="READ COMMITTED")
        with conn.begin():
            if self._dialect == "postgresql":
                conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                conn.execute(select(func.pg_advisory_xact_lock(LOCK_ID)))
            yield

    # --- reading ---------------------------------------------------------------------------

    def _rows(self) -> Iterator[tuple[int, Any]]:
        """Yield ``(seq, row)`` in seq order, BATCH rows per query."""
        after: int | None = None
        while True:
            query = _ROW.order_by(AuditEvent.seq).limit(BATCH)
            if after is not None:
                query = query.where(AuditEvent.seq > after)
            with self._engine.connect() as conn:
                batch = conn.execute(query).all()
            for row in batch:
                yield int(row.seq), row
            if len(batch) < BATCH:
                return
            after = int(batch[-1].seq)

    @staticmethod
    def _record(seq: int, row: Any) -> AuditRecord:
        return AuditRecord(
            seq=seq,
            at=_utc(row.at),
            kind=row.kind,
            actor=row.actor,
            op_id=row.op_id,
            request_id=row.request_id,
            command=row.command,
            data=row.data,
            prev_hash=row.prev_hash,
            hash=row.hash,
        )

    def verify(self) -> Verification:
        """Walk the chain in seq order and return whether every row is intact, else the first
        bad seq and why. Raise AuditError if the database cannot be read."""
        expected_seq, prev_hash, checked = 1, GENESIS, 0
        try:
            for seq, row in self._rows():
                if seq < expected_seq:
                    return Verification(False, checked, seq, f"row {seq} was inserted before row 1")
                if seq > expected_seq:
                    reason = f"row {expected_seq} is missing"
                    return Verification(False, checked, expected_seq, reason)
                try:
                    record = self._record(seq, row)
                    intact = hmac.compare_digest(sign(self._key, record.fields()), record.hash)
                    intact = intact and canonical(record.payload()).decode("utf-8") == record.data
                except (ValueError, TypeError):
                    intact = False
                if not intact:
                    return Verification(False, checked, seq, f"row {seq} was changed")
                if record.prev_hash != prev_hash:
                    reason = f"the row before {seq} was deleted or replaced"
                    return Verification(False, checked, seq, reason)
                checked += 1
                expected_seq, prev_hash = seq + 1, record.hash
        except Exception as exc:
            raise _failure("reading the trail", exc, self._redact) from None
        return Verification(True, checked, None, f"{checked} rows verified")

    def recent(
        self, limit: int = 20, user: str | None = None, command: str | None = None
    ) -> list[AuditRecord]:
        """Given a limit (capped at 200) and optional user and command filters, return the
        newest rows first. Raise AuditError if the database cannot be read."""
        query = _ROW.order_by(AuditEvent.seq.desc()).limit(max(0, min(limit, MAX_RECENT)))
        if user:
            query = query.where(AuditEvent.actor == user)
        if command:
            query = query.where(AuditEvent.command == command)
        try:
            with self._engine.connect() as conn:
                return [self._record(int(row.seq), row) for row in conn.execute(query)]
        except Exception as exc:
            raise _failure("reading the trail", exc, self._redact) from None

    def export(self, fmt: Literal["jsonl", "csv"], out: TextIO) -> int:
        """Given a format and a text stream, write every row (all columns, seq order, streamed)
        and return the count. Raise ValueError for an unknown format, AuditError if the
        database cannot be read."""
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"unknown export format {fmt!r} (expected jsonl or csv)")
        writer = csv.writer(out) if fmt == "csv" else None
        if writer is not None:
            writer.writerow(EXPORT_COLUMNS)
        count = 0
        try:
            for seq, row in self._rows():
                record = self._record(seq, row)
                values = {**record.fields(), "at": _iso(record.at), "hash": record.hash}
                if writer is not None:
                    writer.writerow([values[name] for name in EXPORT_COLUMNS])
                else:
                    out.write(canonical(values).decode("utf-8") + "\n")
                count += 1
        except Exception as exc:
            raise _failure("exporting the trail", exc, self._redact) from None
        return count


# --- the key -----------------------------------------------------------------------------------


def load_key(settings: Settings) -> bytes:
    """Given settings, return the audit HMAC key: HQ_AUDIT_KEY, else (SQLite only) the key file
    ``<db file>.audit-key``, created on first use. Raise SettingsError if the database is shared
    (not SQLite) and HQ_AUDIT_KEY is unset, or the key file is unusable."""
    if settings.hq_audit_key is not None and settings.hq_audit_key.get_secret_value():
        return settings.hq_audit_key.get_secret_value().encode("utf-8")
    url = make_url(settings.hq_database_url)
    if url.get_backend_name() != "sqlite":
        raise SettingsError(
            "HQ_AUDIT_KEY: required with a shared (PostgreSQL) database so every replica "
            "signs the same chain"
        )
    if not url.database or url.database == ":memory:":
        return secrets.token_bytes(32)  # an in-memory database: the chain dies with it
    if url.query.get("uri"):
        raise SettingsError("HQ_AUDIT_KEY: required when the SQLite database is a file: URI")
    return _key_file(Path(url.database + ".audit-key"))


def _key_file(path: Path) -> bytes:
    """Given the key file's path, return its key, creating it (0600, atomically) if missing.
    Raise SettingsError if it cannot be read, created or parsed."""
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, (secrets.token_hex(32) + "\n").encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # never replaces: a concurrent creator's key wins
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        content = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(
            f"HQ_AUDIT_KEY: unset and the key file {path} cannot be used "
            f"({type(exc).__name__}); set HQ_AUDIT_KEY or fix the file"
        ) from None
    if len(content) != 64:
        raise SettingsError(f"HQ_AUDIT_KEY: the key file {path} is not 64 hex digits")
    try:
        return bytes.fromhex(content)
    except ValueError:
        raise SettingsError(f"HQ_AUDIT_KEY: the key file {path} is not 64 hex digits") from None
