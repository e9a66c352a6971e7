"""Database Backup & Restore from the runbook: ``/hq backup now``, ``/hq backup list``,
``/hq backup verify ID [--restore-test] [--s3]``, ``/hq backup fetch ID``, ``/hq backup prune``
and ``/hq restore ID|latest``
(destructive: a second person approves it).

The mechanics are in :mod:`commands.backup_ops`; which backups retention keeps is the pure
:func:`commands.backup_retention.decide`. Plans name exact backups and argv: ``restore latest``
is resolved when the plan is made, so a newer backup appearing changes the plan and voids an
approval. A backup's age is a note (not hashed), so time passing alone does not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from approvals.models import BackupKind, BackupState, utcnow
from commands import backup_ops as ops
from commands.backup_retention import Candidate, Decision, decide
from commands.infra.backup_store import BackupInfo, Catalogue, ago
from commands.infra.compose import ComposeArgv
from commands.infra.gateway import CommandFailed
from commands.spec import (
    Arg,
    CommandSpec,
    Context,
    Option,
    Plan,
    Progress,
    Result,
    Role,
    Row,
    Status,
    Step,
    UserError,
    whole_number,
)

log = logging.getLogger(__name__)
SECTION = "Database backup & restore"
LIST_DEFAULT, LIST_MAX = 20, 200


# --- argument parsers ----------------------------------------------------------------------------
def backup_id(text: str) -> str:
    """Given a backup id as typed, return it. Raise ValueError unless it looks like one."""
    value = text.strip().lower()
    if not ops.BACKUP_ID.match(value):
        raise ValueError("expected a backup id like b-20250115-020000-1a2b (see `/hq backup list`)")
    return value


def backup_ref(text: str) -> str:
    """Given ``latest`` or a backup id, return it."""
    if text.strip().lower() == "latest":
        return "latest"
    return backup_id(text)


list_limit = whole_number(1, LIST_MAX)


# --- shared rendering ----------------------------------------------------------------------------
def where_text(info: BackupInfo) -> str:
    """Given a backup, return where its copies are (path and S3 key)."""
    places = [f"file {info.path}"]
    if info.s3_key:
        places.append(f"s3://{info.s3_bucket}/{info.s3_key}")
    return ", ".join(places)


def counts_text(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    return f"{len(counts)} tables, {total:,} rows"


def _resolve(cat: Catalogue, ref: str) -> BackupInfo:
    if ref == "latest":
        info = cat.latest(ops.LATEST_KINDS)
        if info is None:
            raise UserError(
                "There is no complete manual or scheduled backup yet (`/hq backup list`)."
            )
        return info
    found = cat.get(ref)
    if found is None:
        raise UserError(f"No backup {ref} in the catalogue (`/hq backup list`).")
    return found


def _require_complete(info: BackupInfo) -> None:
    if info.state != BackupState.COMPLETE:
        raise UserError(f"{info.id} is {info.state}; only a complete backup can be used.")
    if not Path(info.path).is_file():
        raise UserError(ops.missing_file(info))


def _age_note(info: BackupInfo) -> str:
    age = ago((utcnow() - info.started_at).total_seconds())
    verified = (
        f"verified {info.verified_at:%Y-%m-%d %H:%M} UTC"
        if info.verified and info.verified_at
        else "NOT verified"
    )
    by = f" by {info.requested_by}" if info.requested_by else ""
    return (
        f"{info.id} was taken {age} ago ({info.started_at:%Y-%m-%d %H:%M:%S} UTC, "
        f"{info.kind}{by}); {verified}; tables: {counts_text(info.table_counts)}."
    )


# --- /hq backup now ------------------------------------------------------------------------------
def _kind(ctx: Context) -> str:
    return BackupKind.SCHEDULED if ctx.actor.source == "scheduler" else BackupKind.MANUAL


def plan_backup(args: Mapping[str, Any], ctx: Context) -> Plan:
    """Given the settings, return the plan of a backup: every step and the pg_dump argv (the
    user, database and snapshot are filled in from the deployment's .env and the exported
    snapshot when it runs)."""
    settings = ctx.settings
    folder = ops.backup_folder(settings)
    bucket = settings.hq_backup_bucket
    encrypted = settings.hq_backup_key is not None
    suffix = ".dump.enc" if encrypted else ".dump"
    steps = [
        Step("take the backup lock (one backup or restore at a time)"),
        Step("export a REPEATABLE READ snapshot and count the rows of every table in it"),
        Step(
            f"pg_dump in the `{settings.hq_service_postgres}` container (Docker Engine), "
            "streamed, SHA-256 and size computed on the way",
            ops.DUMP_ARGV,
        ),
    ]
    if encrypted:
        steps.append(Step("encrypt with AES-256-GCM (HQ_BACKUP_KEY), 1 MiB chunks"))
    steps.append(
        Step(
            f"write {folder}/db_YYYYmmdd_HHMMSS{suffix} atomically (temporary name, fsync, rename)"
        )
    )
    if bucket:
        steps.append(
            Step(f"upload to s3://{bucket}/{ops.S3_PREFIX} (multipart; aborted on failure)")
        )
    steps.append(
        Step("read the whole archive with the host's pg_restore", ops.verify_argv(settings))
    )
    steps.append(Step("record it in the catalogue"))
    kind = _kind(ctx)
    return Plan(
        command="backup now",
        summary=f"back up the Harmoniq database ({kind}) to {folder}"
        + (f" and s3://{bucket}" if bucket else "")
        + (", encrypted" if encrypted else ""),
        steps=tuple(steps),
        targets=("postgres",),
        data={"kind": kind},
    )


def backup_result(taken: ops.Taken) -> Result:
    """Given a finished backup, return what the channel is told."""
    info = taken.info
    headline = (
        f"Backup {info.id} done: {ops.human_size(info.size)} in {info.duration_s:.1f} s, "
        f"sha256 {info.sha256[:12]}"
    )
    lines = [
        f"Where: {where_text(info)}",
        f"Checksum: sha256 {info.sha256}",
        f"Tables: {counts_text(info.table_counts)} (counted in the dump's snapshot)",
        "Encrypted: " + ("yes (AES-256-GCM)" if info.encrypted else "no"),
    ]
    if info.verified:
        headline += ", verified"
        lines.append("Verified: pg_restore read the whole archive")
    else:
        lines.append(f"Verified: NO: {taken.verify_error}")
    if taken.upload_error:
        lines.append(f"S3: NOT uploaded: {taken.upload_error}")
    if not taken.clean:
        problems = "; ".join(p for p in (taken.verify_error, taken.upload_error) if p)
        headline = f"Backup {info.id} written to disk, but {problems}"
    return Result(
        ok=taken.clean,
        title=headline,
        text="\n".join(lines),
        data={"id": info.id, "path": info.path, "sha256": info.sha256, "size": info.size},
    )


def execute_backup(plan: Plan, ctx: Context, progress: Progress) -> Result:
    with ops.acquire(ctx, "backup now"):
        taken = ops.take_backup(ctx, kind=str(plan.data["kind"]), progress=progress)
    return backup_result(taken)


# --- /hq backup list -----------------------------------------------------------------------------
def plan_list(args: Mapping[str, Any], ctx: Context) -> Plan:
    every = bool(args.get("all"))
    limit = int(args.get("limit") or LIST_DEFAULT)
    what = "every backup (failed and deleted too)" if every else "the complete backups"
    return Plan(
        command="backup list",
        summary=f"list {what}, newest first (at most {limit})",
        data={"all": every, "limit": limit},
    )


def backup_row(info: BackupInfo, now: Any) -> Row:
    """Given a catalogue entry, return its line: size, age, verified, encrypted, where."""
    age = ago((now - info.started_at).total_seconds())
    if info.state == BackupState.COMPLETE:
        missing = not Path(info.path).is_file()
        status = Status.OK if info.verified and not missing else Status.WARN
        parts = [
            ops.human_size(info.size),
            f"{age} ago",
            "verified" if info.verified else "not verified",
            "encrypted" if info.encrypted else "not encrypted",
            info.kind,
            info.where + (" (FILE MISSING)" if missing else ""),
            info.file_name,
        ]
    else:
        status = Status.FAIL if info.state == BackupState.FAILED else Status.UNKNOWN
        parts = [info.state, f"{age} ago", info.kind]
        if info.error:
            parts.append(info.error[:200])
    return Row(info.id, status, ", ".join(parts))


def execute_list(plan: Plan, ctx: Context, progress: Progress) -> Result:
    cat = ops.catalogue(ctx)
    states = None if plan.data["all"] else (BackupState.COMPLETE,)
    found = cat.listing(states=states)
    shown = found[: int(plan.data["limit"])]
    now = utcnow()
    rows = tuple(backup_row(info, now) for info in shown)
    if not found:
        return Result(ok=True, title="No backups yet. `/hq backup now` takes one.")
    more = f" (newest {len(shown)} shown)" if len(found) > len(shown) else ""
    total = sum(i.size for i in found if i.state == BackupState.COMPLETE)
    return Result(
        ok=True,
        title=f"{len(found)} backup(s), {ops.human_size(total)} in all{more}",
        rows=rows,
    )


# --- /hq backup verify ---------------------------------------------------------------------------
def plan_verify(args: Mapping[str, Any], ctx: Context) -> Plan:
    ref = str(args["id"])
    restore_test = bool(args.get("restore_test"))
    s3 = bool(args.get("s3"))
    steps = [
        Step("take the backup lock"),
        Step("re-hash the file (SHA-256) and compare with the catalogue"),
        Step("read the whole archive with the host's pg_restore", ops.verify_argv(ctx.settings)),
    ]
    if s3:
        steps.append(
            Step("re-hash the S3 copy (streamed, nothing written) and compare with the catalogue")
        )
    if restore_test:
        steps += [
            Step("create a scratch database hq_restore_test_<random> on the deployment's server"),
            Step(
                "restore into it",
                ops.scratch_argv(ctx.settings, path="FILE", database="hq_restore_test_<random>"),
            ),
            Step("compare the row count of every table with the counts recorded at backup time"),
            Step("drop the scratch database (always)"),
        ]
    return Plan(
        command="backup verify",
        summary=f"verify backup {ref}"
        + (" and its S3 copy" if s3 else "")
        + (" with a restore test" if restore_test else ""),
        steps=tuple(steps),
        targets=(ref,),
        data={"id": ref, "restore_test": restore_test, "s3": s3},
    )


def execute_verify(plan: Plan, ctx: Context, progress: Progress) -> Result:
    cat = ops.catalogue(ctx)
    ref = str(plan.data["id"])
    info = _resolve(cat, ref)
    if info.state != BackupState.COMPLETE:
        raise UserError(f"{info.id} is {info.state}; only a complete backup can be verified.")
    if plan.data.get("s3") and not info.s3_key:
        raise UserError(
            f"{info.id} has no S3 copy (it was taken without HQ_BACKUP_BUCKET, or its upload "
            "failed); leave out --s3 to verify its file."
        )
    with ops.acquire(ctx, "backup verify"):
        progress(f"reading {info.file_name} ({ops.human_size(info.size)}) in full")
        try:
            checked = ops.check_archive(ctx.settings, info)
        except UserError as err:
            cat.set_verified(info.id, False, utcnow(), err.message)
            return Result(ok=False, title=f"Backup {info.id} is NOT good: {err.message}")
        rows = [
            Row("checksum", Status.OK, f"sha256 {checked.sha256[:12]} matches the catalogue"),
            Row(
                "full read",
                Status.OK,
                f"pg_restore read all {ops.human_size(checked.size)}",
                seconds=checked.seconds,
            ),
        ]
        if plan.data.get("s3"):
            progress(f"re-hashing the S3 copy s3://{info.s3_bucket}/{info.s3_key}")
            try:
                copy = ops.check_s3_copy(ctx, info)
            except UserError as err:
                cat.set_verified(info.id, True, utcnow())  # the file itself passed
                rows.append(Row("s3 copy", Status.FAIL, err.message))
                return Result(
                    ok=False,
                    title=f"Backup {info.id}: the file is good, its S3 copy is NOT: {err.message}",
                    rows=tuple(rows),
                )
            rows.append(
                Row(
                    "s3 copy",
                    Status.OK,
                    f"s3://{info.s3_bucket}/{info.s3_key}: {ops.human_size(copy.size)}, sha256 "
                    f"{copy.sha256[:12]} matches (the same bytes as the file read in full)",
                    seconds=copy.seconds,
                )
            )
        if plan.data.get("restore_test"):
            started = time.monotonic()
            try:
                counts, differences = ops.restore_test(ctx, info, progress)
            except UserError as err:
                # the full read passed: a scratch restore that cannot run says more about the
                # server than the archive, so the verified mark stays as the full read left it
                cat.set_verified(info.id, True, utcnow())
                return Result(ok=False, title=err.message, rows=tuple(rows))
            took = time.monotonic() - started
            if differences:
                rows += [Row("row counts", Status.FAIL, d) for d in differences]
                cat.set_verified(info.id, False, utcnow(), "; ".join(differences)[:2000])
                return Result(
                    ok=False,
                    title=f"Backup {info.id}: the restore test found other row counts than "
                    "those recorded at backup time",
                    rows=tuple(rows),
                )
            rows.append(
                Row(
                    "restore test",
                    Status.OK,
                    f"restored into a scratch database; {counts_text(counts)}, every table's "
                    "count equals the one recorded at backup time",
                    seconds=took,
                )
            )
        cat.set_verified(info.id, True, utcnow())
    what = "restore test passed" if plan.data.get("restore_test") else "full read passed"
    copy_note = ", S3 copy matches" if plan.data.get("s3") else ""
    return Result(
        ok=True,
        title=f"Backup {info.id} verified: checksum matches, {what}{copy_note}",
        rows=tuple(rows),
    )


# --- /hq backup fetch ----------------------------------------------------------------------------
def plan_fetch(args: Mapping[str, Any], ctx: Context) -> Plan:
    """Given a backup id, return the plan that brings its file back from its S3 copy. Raise
    UserError when it has no S3 copy or its file is on disk."""
    info = _resolve(ops.catalogue(ctx), str(args["id"]))
    if info.state != BackupState.COMPLETE:
        raise UserError(f"{info.id} is {info.state}; only a complete backup can be fetched.")
    if not info.s3_key:
        raise UserError(f"{info.id} has no S3 copy to fetch from.")
    if Path(info.path).exists():
        raise UserError(
            f"The file of {info.id} is on disk ({info.path}); nothing to fetch. "
            f"`/hq backup verify {info.id} --s3` compares it with its S3 copy."
        )
    where = f"s3://{info.s3_bucket}/{info.s3_key}"
    return Plan(
        command="backup fetch",
        summary=f"bring the file of backup {info.id} back from {where} "
        f"({ops.human_size(info.size)}, sha256 {info.sha256[:12]})",
        steps=(
            Step("take the backup lock"),
            Step(
                f"stream {where} into a temporary file in {Path(info.path).parent}, hashing it "
                "on the way"
            ),
            Step(
                f"rename it to {info.file_name} only if its size and SHA-256 equal the "
                "catalogue's (otherwise nothing is kept)"
            ),
            Step(
                "read the whole archive with the host's pg_restore", ops.verify_argv(ctx.settings)
            ),
        ),
        targets=(info.id,),
        data={"id": info.id, "sha256": info.sha256},
    )


def execute_fetch(plan: Plan, ctx: Context, progress: Progress) -> Result:
    cat = ops.catalogue(ctx)
    with ops.acquire(ctx, "backup fetch"):
        info = cat.get(str(plan.data["id"]))
        if info is None or info.state != BackupState.COMPLETE or not info.s3_key:
            raise UserError(f"{plan.data['id']} is no longer a complete backup with an S3 copy.")
        if info.sha256 != plan.data["sha256"]:
            raise UserError(f"{info.id} changed since the plan was made; nothing was done.")
        progress(f"fetching s3://{info.s3_bucket}/{info.s3_key} ({ops.human_size(info.size)})")
        fetched = ops.fetch_s3_copy(ctx, info)
        rows = [
            Row(
                "fetched",
                Status.OK,
                f"{ops.human_size(fetched.size)} into {info.path}, sha256 {fetched.sha256[:12]} "
                "matches the catalogue",
                seconds=fetched.seconds,
            )
        ]
        progress(f"reading {info.file_name} in full")
        try:
            checked = ops.check_archive(ctx.settings, info)
        except UserError as err:
            cat.set_verified(info.id, False, utcnow(), err.message)
            rows.append(Row("full read", Status.FAIL, err.message))
            return Result(
                ok=False,
                title=f"Fetched {info.id}, but it is NOT good: {err.message}",
                rows=tuple(rows),
            )
        cat.set_verified(info.id, True, utcnow())
        rows.append(
            Row(
                "full read",
                Status.OK,
                f"pg_restore read all {ops.human_size(checked.size)}",
                seconds=checked.seconds,
            )
        )
    return Result(
        ok=True,
        title=f"Backup {info.id} is back on disk from its S3 copy and verified "
        f"({ops.human_size(info.size)}, sha256 {info.sha256[:12]})",
        rows=tuple(rows),
        data={"backup": info.id},
    )


# --- /hq backup prune ----------------------------------------------------------------------------
def _candidates(cat: Catalogue) -> list[BackupInfo]:
    return cat.listing(states=(BackupState.COMPLETE,))


def retention_for(settings: Any, backups: list[BackupInfo]) -> Decision:
    """Given settings and complete backups, return the retention decision."""
    return decide(
        [Candidate(b.id, b.started_at, b.verified) for b in backups],
        keep_daily=int(settings.hq_backup_keep_daily),
        keep_weekly=int(settings.hq_backup_keep_weekly),
    )


def plan_prune(args: Mapping[str, Any], ctx: Context) -> Plan:
    settings = ctx.settings
    backups = _candidates(ops.catalogue(ctx))
    decision = retention_for(settings, backups)
    by_id = {b.id: b for b in backups}
    steps = [Step("take the backup lock, and decide again on the catalogue as it is then")]
    for backup_id in decision.delete:
        info = by_id[backup_id]
        where = f"{info.file_name}" + (
            f" and s3://{info.s3_bucket}/{info.s3_key}" if info.s3_key else ""
        )
        steps.append(Step(f"delete {backup_id} ({ops.human_size(info.size)}): {where}"))
    rule = (
        f"keep the newest backup of {settings.hq_backup_keep_daily} days and of "
        f"{settings.hq_backup_keep_weekly} weeks, and the newest verified one"
    )
    summary = (
        f"prune backups ({rule}): delete {len(decision.delete)}, keep {len(decision.keep)}"
        if decision.delete
        else f"prune backups ({rule}): nothing to delete, {len(decision.keep)} kept"
    )
    kept = [f"keep {i}: {', '.join(reasons)}" for i, reasons in decision.keep.items()]
    return Plan(
        command="backup prune",
        summary=summary,
        steps=tuple(steps),
        data={"delete": list(decision.delete)},
        notes=tuple(kept[:30]),
    )


def prune(ctx: Context, progress: Progress, only: list[str] | None = None) -> Result:
    """Apply retention (the caller holds the lock): delete the S3 object and the file of every
    backup the rules do not keep (and, when ``only`` is given, that is in it), then mark its
    catalogue row deleted. The scheduler calls this after each scheduled backup."""
    cat = ops.catalogue(ctx)
    backups = _candidates(cat)
    decision = retention_for(ctx.settings, backups)
    by_id = {b.id: b for b in backups}
    doomed = [i for i in decision.delete if only is None or i in only]
    rows: list[Row] = []
    client = None
    for backup_id in doomed:
        info = by_id[backup_id]
        if info.s3_key:
            try:
                client = client or ops.s3_client(ctx)
                client.remove_object(info.s3_bucket, info.s3_key)
            except Exception as exc:
                rows.append(
                    Row(
                        backup_id,
                        Status.FAIL,
                        f"kept: deleting s3://{info.s3_bucket}/{info.s3_key} failed "
                        f"({ops.describe(exc)})",
                    )
                )
                continue
            cat.clear_s3(backup_id)
        try:
            Path(info.path).unlink(missing_ok=True)
        except OSError as exc:
            rows.append(
                Row(backup_id, Status.FAIL, f"deleting {info.path} failed ({ops.describe(exc)})")
            )
            continue
        cat.mark_deleted(backup_id, utcnow())
        progress(f"deleted {backup_id}")
        rows.append(Row(backup_id, Status.OK, f"deleted ({ops.human_size(info.size)})"))
    failed = [r for r in rows if r.status == Status.FAIL]
    deleted = len(rows) - len(failed)
    title = f"Pruned {deleted} backup(s); {len(decision.keep)} kept"
    if failed:
        title += f"; {len(failed)} could not be deleted"
    return Result(ok=not failed, title=title, rows=tuple(rows))


def execute_prune(plan: Plan, ctx: Context, progress: Progress) -> Result:
    with ops.acquire(ctx, "backup prune"):
        return prune(ctx, progress, only=list(plan.data["delete"]))


def apply_retention(ctx: Context, progress: Progress) -> Result:
    """Take the lock and apply retention as the catalogue is now (for the scheduler, after a
    scheduled backup). Raise LockBusy when a backup or restore runs."""
    with ops.acquire(ctx, "retention"):
        return prune(ctx, progress)


# --- /hq restore ---------------------------------------------------------------------------------
def plan_restore(args: Mapping[str, Any], ctx: Context) -> Plan:
    """Given ``latest`` or a backup id, return the plan naming the exact backup, its size and
    checksum, and every argv. Raise UserError when there is no such complete backup."""
    settings = ctx.settings
    info = _resolve(ops.catalogue(ctx), str(args["backup"]))
    _require_complete(info)
    jobs = 1 if info.encrypted else int(settings.hq_restore_jobs)
    compose = ComposeArgv.from_settings(settings)
    backend = settings.hq_service_backend
    restore = ops.restore_argv(settings, path=None if info.encrypted else info.path, jobs=jobs)
    feed = " (decrypted on the fly into its stdin)" if info.encrypted else ""
    how = (
        "in one transaction: all or nothing"
        if jobs == 1
        else f"with {jobs} jobs: a failure leaves it partly restored"
    )
    steps = (
        Step("take the backup lock (no backup or other restore meanwhile)"),
        Step(
            f"check {info.id} before touching anything: size {info.size}, sha256 "
            f"{info.sha256[:12]}, and a full read with pg_restore",
            ops.verify_argv(settings),
        ),
        Step("take a safety backup of the current database (kind safety)"),
        Step(f"stop {backend}", compose.stop([backend])),
        Step(f"restore {info.file_name} into the database {how}{feed}", restore),
        Step(f"start {backend}", compose.start([backend])),
        Step(f"wait until {settings.hq_backend_url}/health answers ok"),
    )
    return Plan(
        command="restore",
        summary=f"REPLACE the Harmoniq database with backup {info.id} "
        f"({ops.human_size(info.size)}, sha256 {info.sha256[:12]}); the backend is stopped "
        "meanwhile",
        steps=steps,
        targets=(info.id, "postgres", backend),
        data={
            "backup": info.id,
            "path": info.path,
            "size": info.size,
            "sha256": info.sha256,
            "encrypted": info.encrypted,
            "jobs": jobs,
            "stop": list(compose.stop([backend])),
            "restore": list(restore),
            "start": list(compose.start([backend])),
        },
        notes=(_age_note(info),),
    )


@dataclass
class RestoreState:
    """Where a restore stands, to tell the user exactly what state things are in."""

    backup: str
    safety: str = ""
    backend: str = "running"  # running, stopped, or unknown (a stop or start failed)
    database: str = "unchanged"  # unchanged, restoring, restored
    single_transaction: bool = True

    def sentence(self) -> str:
        if self.database == "unchanged":
            db = "The database was not changed."
        elif self.database == "restored":
            db = f"The database holds the data of {self.backup}."
        elif self.single_transaction:
            db = (
                "The database is as it was before: pg_restore ran in one transaction, which "
                "PostgreSQL rolls back when it fails."
            )
        else:
            db = f"The database may be PARTLY restored from {self.backup}."
        backend = {
            "running": "The backend is running.",
            "stopped": "The backend is STOPPED; start it with `/hq restart backend`.",
        }.get(
            self.backend,
            "The backend may be stopped: check with `/hq ps`, start it with `/hq restart backend`.",
        )
        way_back = (
            f" The safety backup of the database as it was is {self.safety}: "
            f"`/hq restore {self.safety} --reason ...` puts it back."
            if self.safety
            else ""
        )
        return f"{db} {backend}{way_back}"


def execute_restore(plan: Plan, ctx: Context, progress: Progress) -> Result:
    data = plan.data
    state = RestoreState(backup=str(data["backup"]), single_transaction=int(data["jobs"]) == 1)
    cat = ops.catalogue(ctx)
    with ops.acquire(ctx, "restore"):
        try:
            return _restore(plan, ctx, progress, cat, state)
        except Exception as exc:
            log.exception("restore of %s failed", state.backup)
            why = (
                exc.message
                if isinstance(exc, UserError)
                else (f"unexpected error (operation {ctx.operation_id}; details in hq-bot's log)")
            )
            return Result(
                ok=False, title=f"Restore of {state.backup} failed: {why}. {state.sentence()}"
            )


def _restore(
    plan: Plan, ctx: Context, progress: Progress, cat: Catalogue, state: RestoreState
) -> Result:
    settings = ctx.settings
    data = plan.data
    info = cat.get(state.backup)
    if info is None or info.state != BackupState.COMPLETE or info.sha256 != data["sha256"]:
        return Result(
            ok=False,
            title=f"Restore refused: {state.backup} changed or is gone. Nothing was changed.",
        )
    progress(f"checking {info.id}: sha256 and a full read of the archive")
    try:
        checked = ops.check_archive(settings, info)
    except UserError as err:
        cat.set_verified(info.id, False, utcnow(), err.message)
        return Result(
            ok=False,
            title=f"Restore refused before anything was touched: {err.message.rstrip('.')}. "
            f"{state.sentence()}",
        )
    cat.set_verified(info.id, True, utcnow())
    progress(
        f"{info.id} is intact: sha256 matches, pg_restore read all "
        f"{ops.human_size(checked.size)} ({checked.seconds:.1f} s)"
    )
    progress("taking a safety backup of the current database")
    try:
        safety = ops.take_backup(ctx, kind=BackupKind.SAFETY, progress=progress)
    except UserError as err:
        return Result(
            ok=False,
            title=f"Restore stopped before anything was touched: the safety backup failed "
            f"({err.message.rstrip('.')}). {state.sentence()}",
        )
    if safety.verify_error:
        return Result(
            ok=False,
            title=f"Restore stopped before anything was touched: the safety backup "
            f"{safety.info.id} could not be verified ({safety.verify_error}). "
            f"{state.sentence()}",
        )
    state.safety = safety.info.id
    note = f" (not uploaded: {safety.upload_error})" if safety.upload_error else ""
    progress(f"safety backup {safety.info.id}: {ops.human_size(safety.info.size)}, verified{note}")
    backend = settings.hq_service_backend
    progress(f"stopping {backend}")
    state.backend = "unknown"
    ctx.infra.compose.run(tuple(data["stop"]))
    state.backend = "stopped"
    progress(f"{backend} stopped; restoring {info.file_name}")
    user, password, database = ctx.infra.postgres.credentials()
    argv = ops.fill(tuple(data["restore"]), {"DB_USER": user, "DB_NAME": database})
    started = time.monotonic()
    state.database = "restoring"
    try:
        ops.run_pg_restore(settings, argv, info, password, on_stdin=bool(data["encrypted"]))
    except UserError as exc:  # pg_restore failed, or the archive could not be fed to it
        if isinstance(exc, CommandFailed):
            why = exc.stderr_tail or f"exit code {exc.returncode}"
        else:
            why = exc.message.rstrip(".")
        if state.single_transaction:
            state.database = "unchanged"
            progress("pg_restore failed; its transaction was rolled back: starting the backend")
            state.backend = "unknown"
            ctx.infra.compose.run(tuple(data["start"]))
            state.backend = "running"
            healthy, detail = ops.wait_backend_healthy(ctx, float(settings.hq_restore_health_wait))
            health = "healthy" if healthy else f"NOT healthy ({detail})"
            return Result(
                ok=False,
                title=f"Restore of {info.id} failed: pg_restore: {why}. {state.sentence()} "
                f"The backend was started again and is {health}.",
            )
        return Result(
            ok=False,
            title=f"Restore of {info.id} failed: pg_restore: {why}. {state.sentence()}",
        )
    state.database = "restored"
    progress(f"pg_restore finished ({time.monotonic() - started:.1f} s); starting {backend}")
    state.backend = "unknown"
    ctx.infra.compose.run(tuple(data["start"]))
    state.backend = "running"
    healthy, detail = ops.wait_backend_healthy(ctx, float(settings.hq_restore_health_wait))
    if not healthy:
        return Result(
            ok=False,
            title=f"Restored {info.id}, but the backend's /health is not ok after "
            f"{settings.hq_restore_health_wait:g} s ({detail}). {state.sentence()}",
        )
    progress(f"{backend} /health: {detail}")
    return Result(
        ok=True,
        title=f"Restored {info.id} ({ops.human_size(info.size)}, sha256 {info.sha256[:12]}); "
        f"the backend is healthy. The database as it was is in safety backup {state.safety}.",
        data={"backup": info.id, "safety": state.safety},
    )


SPECS = (
    CommandSpec(
        name="backup now",
        summary="Back up the database now (pg_dump, streamed to disk and S3, checked).",
        plan=plan_backup,
        execute=execute_backup,
        roles=frozenset({Role.OPERATOR}),
        section=SECTION,
    ),
    CommandSpec(
        name="backup list",
        summary="List backups, newest first: size, age, verified, encrypted, where.",
        plan=plan_list,
        execute=execute_list,
        options=(
            Option("--all", flag=True, default=False, help="failed and deleted backups too"),
            Option(
                "--limit", parse=list_limit, metavar="N", help=f"at most N (default {LIST_DEFAULT})"
            ),
        ),
        roles=frozenset({Role.OPERATOR}),
        section=SECTION,
        immediate=True,
        readonly=True,
    ),
    CommandSpec(
        name="backup verify",
        summary="Re-hash a backup and read it in full; --restore-test restores it into a "
        "scratch database and compares every table's row count.",
        plan=plan_verify,
        execute=execute_verify,
        args=(Arg("id", parse=backup_ref, metavar="ID", help="a backup id, or `latest`"),),
        options=(
            Option(
                "--restore-test",
                flag=True,
                default=False,
                help="restore into hq_restore_test_<random> and compare row counts",
            ),
            Option(
                "--s3",
                flag=True,
                default=False,
                help="also re-hash the S3 copy and compare it with the catalogue",
            ),
        ),
        roles=frozenset({Role.OPERATOR}),
        section=SECTION,
    ),
    CommandSpec(
        name="backup fetch",
        summary="Bring a backup's file back from its S3 copy (checked against the catalogue's "
        "SHA-256, then read in full).",
        plan=plan_fetch,
        execute=execute_fetch,
        args=(Arg("id", parse=backup_id, metavar="ID", help="a backup id"),),
        roles=frozenset({Role.OPERATOR}),
        section=SECTION,
    ),
    CommandSpec(
        name="backup prune",
        summary="Delete backups the retention rules do not keep (HQ_BACKUP_KEEP_DAILY/WEEKLY); "
        "--dry-run shows which.",
        plan=plan_prune,
        execute=execute_prune,
        roles=frozenset({Role.OPERATOR}),
        section=SECTION,
    ),
    CommandSpec(
        name="restore",
        summary="Replace the database with a backup (`latest`: the newest manual or scheduled "
        "one). Checks it first and takes a safety backup.",
        plan=plan_restore,
        execute=execute_restore,
        args=(
            Arg("backup", parse=backup_ref, metavar="ID|latest", help="a backup id or `latest`"),
        ),
        destructive=True,
        roles=frozenset({Role.OPERATOR}),
        section=SECTION,
    ),
)
