"""MinIO backup: ``/hq minio backup`` mirrors the uploads bucket into a folder (the runbook's
``mc mirror local/harmoniq-uploads /backup/``), and ``/hq minio backups`` lists the runs.

The plan is pure: bucket, endpoint, folder and mirror bucket come from settings. Execute records
a :class:`~approvals.models.MirrorRun` row (running -> succeeded | failed), runs the engine in
:mod:`commands.infra.mirror` on its own small download pool, and reports copied, skipped,
failed (with keys), deleted-in-bucket, bytes, duration and the verification checks. A run is
``ok`` only when it is verified.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from approvals.models import MirrorRun, utcnow
from commands.health import human_bytes
from commands.infra.mirror import (
    MANIFEST_NAME,
    Failure,
    Manifest,
    ManifestError,
    MinioStore,
    Mirror,
    MirrorJob,
    Report,
    Store,
    display_key,
    folder_usage,
)
from commands.spec import (
    Attachment,
    CommandSpec,
    Context,
    Option,
    Plan,
    Progress,
    Result,
    Row,
    Status,
    Step,
    UserError,
    whole_number,
)

SHOW_KEYS = 10  # keys listed inline per row; the rest go into an attachment
LIST_DEFAULT, LIST_MAX = 10, 100


class RunState:
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def backup_dir(settings: Any) -> Path:
    """Given settings, return the mirror folder: HQ_MINIO_BACKUP_DIR, else
    ``<HQ_BACKUP_DIR>/minio``, made absolute against the working directory."""
    folder = settings.hq_minio_backup_dir or Path(settings.hq_backup_dir) / "minio"
    return Path(os.path.abspath(folder))


# --- the catalogue --------------------------------------------------------------------------------
class MirrorRuns:
    """Create, finish and list :class:`MirrorRun` rows."""

    def __init__(self, engine: Engine) -> None:
        self._sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)

    def start(self, *, op_id: str, requested_by: str, job: MirrorJob) -> int:
        """Insert a running row for ``job``; return its number."""
        with self._sessions.begin() as session:
            row = MirrorRun(
                op_id=op_id,
                requested_by=requested_by[:128],
                state=RunState.RUNNING,
                bucket=job.bucket,
                target=str(job.target),
                mirror_bucket=job.mirror_bucket,
                started_at=utcnow(),
            )
            session.add(row)
            session.flush()
            return int(row.id)

    def finish(self, run_id: int, report: Report) -> None:
        """Record what the run did; its state is succeeded only when it was verified."""
        copy = report.bucket_copy
        failed = len(report.failed) + (len(copy.failed) if copy else 0)
        self._update(
            run_id,
            state=RunState.SUCCEEDED if report.verified else RunState.FAILED,
            duration_s=round(report.seconds, 3),
            listed=report.listed,
            copied=len(report.copied),
            skipped=report.skipped,
            failed=failed,
            deleted=len(report.deleted),
            bytes=report.bytes,
            verified=report.verified,
            detail=_detail(report)[:4000],
        )

    def fail(self, run_id: int, seconds: float, why: str) -> None:
        """Record a run that stopped before it could report (folder, manifest, listing)."""
        self._update(run_id, state=RunState.FAILED, duration_s=round(seconds, 3), detail=why[:4000])

    def _update(self, run_id: int, **values: Any) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(MirrorRun)
                .where(MirrorRun.id == run_id)
                .values(finished_at=utcnow(), **values)
            )

    def recent(self, limit: int) -> list[MirrorRun]:
        """Return the newest ``limit`` runs, newest first."""
        with self._sessions() as session:
            query = select(MirrorRun).order_by(MirrorRun.started_at.desc(), MirrorRun.id.desc())
            return list(session.scalars(query.limit(limit)))


def _detail(report: Report) -> str:
    parts = [check.detail for check in report.checks]
    failures = [*report.failed, *(report.bucket_copy.failed if report.bucket_copy else [])]
    if failures:
        shown = "; ".join(_failure_text(f) for f in failures[:SHOW_KEYS])
        parts.append(f"failed: {shown}" + (" ..." if len(failures) > SHOW_KEYS else ""))
    return "\n".join(parts)


# --- the store (a function, so tests can hand in a fake) -----------------------------------------
def make_store(ctx: Context, workers: int) -> Store:
    """Return the S3 store the mirror reads from: a minio SDK client on HQ_S3_ENDPOINT with the
    deployment's keys from its env file (read now, so a rotated key is picked up)."""
    settings = ctx.settings
    return MinioStore.connect(
        settings.hq_s3_endpoint,
        ctx.infra.env.read(),
        connections=workers + 1,
        connect_timeout=float(settings.hq_health_timeout),
        read_timeout=float(settings.hq_minio_backup_read_timeout),
    )


# --- /hq minio backup -----------------------------------------------------------------------------
def _backup_plan(args: Mapping[str, Any], ctx: Context) -> Plan:
    s = ctx.settings
    bucket, target, mirror = s.hq_s3_bucket, backup_dir(s), s.hq_minio_mirror_bucket
    workers = int(s.hq_minio_backup_workers)
    verify_all = bool(args.get("verify_all"))
    steps = [
        Step(f"List bucket {bucket} at {s.hq_s3_endpoint} (ListObjectsV2, paginated)"),
        Step(
            f"Download new and changed objects into {target}, {workers} at a time, each through "
            "a temp file, fsync and rename; skip objects whose size and ETag match the manifest"
        ),
        Step(
            "Verify: object count against the bucket; SHA-256 of every copied file read back; "
            "size and MD5 (single-part ETags) against the listing"
            + ("; every unchanged file read back too" if verify_all else "")
        ),
    ]
    if mirror:
        steps.append(Step(f"Copy new and changed objects to bucket {mirror} (server-side)"))
    steps.append(Step(f"Write the manifest ({MANIFEST_NAME}) and record the run"))
    summary = f"Mirror bucket {bucket} to {target}" + (f" and to bucket {mirror}" if mirror else "")
    targets = [f"s3://{bucket}", str(target)] + ([f"s3://{mirror}"] if mirror else [])
    return Plan(
        command="minio backup",
        summary=summary,
        steps=tuple(steps),
        targets=tuple(targets),
        data={
            "bucket": bucket,
            "target": str(target),
            "mirror_bucket": mirror,
            "workers": workers,
            "verify_all": verify_all,
        },
    )


def _backup_execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
    data = plan.data
    job = MirrorJob(
        bucket=str(data["bucket"]),
        target=Path(str(data["target"])),
        mirror_bucket=str(data["mirror_bucket"]),
        workers=int(data["workers"]),
        verify_all=bool(data["verify_all"]),
    )
    runs = MirrorRuns(ctx.governance.engine)
    run_id = runs.start(op_id=ctx.operation_id, requested_by=ctx.actor.label, job=job)
    started = utcnow()
    try:
        store = make_store(ctx, job.workers)
        report = Mirror(store, job, progress).run()
    except UserError as err:
        runs.fail(run_id, _since(started), err.message)
        raise UserError(f"MinIO backup #{run_id} failed: {err.message}") from None
    except BaseException as exc:
        runs.fail(run_id, _since(started), f"unexpected {type(exc).__name__}")
        raise
    runs.finish(run_id, report)
    return render_report(run_id, report)


def _since(started: dt.datetime) -> float:
    return (utcnow() - started).total_seconds()


def _failure_text(failure: Failure) -> str:
    return f"`{display_key(failure.key)}` ({failure.reason})" if failure.key else failure.reason


def _keys_text(keys: Sequence[str]) -> str:
    shown = ", ".join(f"`{display_key(k)}`" for k in keys[:SHOW_KEYS])
    more = len(keys) - SHOW_KEYS
    return shown + (f" and {more} more" if more > 0 else "")


def _failures_text(failures: Sequence[Failure]) -> str:
    shown = "; ".join(_failure_text(f) for f in failures[:SHOW_KEYS])
    more = len(failures) - SHOW_KEYS
    return shown + (f"; and {more} more (attached)" if more > 0 else "")


def render_report(run_id: int, report: Report) -> Result:
    """Given a run's number and report, return the chat result: a headline with the numbers,
    one row per figure and check, and the full failure list attached when it is long."""
    copy = report.bucket_copy
    failures = [*report.failed, *(copy.failed if copy else [])]
    figures = (
        f"{len(report.copied)} copied, {report.skipped} unchanged, {len(failures)} failed, "
        f"{human_bytes(report.bytes)} in {report.seconds:.1f} s"
    )
    word = "verified" if report.verified else "NOT verified"
    title = f"MinIO backup #{run_id} {word}: {figures}"
    rows = [
        Row("bucket", Status.OK, f"{report.bucket}: {report.listed} object(s)"),
        Row("target", Status.OK, str(report.target)),
        Row(
            "copied",
            Status.OK,
            f"{len(report.copied)} object(s), {human_bytes(report.bytes)}"
            + (f": {_keys_text(report.copied)}" if report.copied else ""),
        ),
        Row("unchanged", Status.OK, f"{report.skipped} object(s) skipped"),
        Row(
            "failed",
            Status.FAIL if report.failed else Status.OK,
            f"{len(report.failed)}"
            + (f": {_failures_text(report.failed)}" if report.failed else ""),
        ),
    ]
    if report.deleted:
        rows.append(
            Row(
                "deleted in the bucket",
                Status.WARN,
                f"{len(report.deleted)} object(s) gone from the bucket; their copies are kept: "
                + _keys_text(report.deleted),
            )
        )
    for check in report.checks:
        rows.append(
            Row(f"check: {check.name}", Status.OK if check.ok else Status.FAIL, check.detail)
        )
    if copy is not None:
        status = Status.OK if copy.verified else Status.FAIL
        detail = (
            f"{len(copy.copied)} copied server-side, {copy.skipped} unchanged, "
            f"{len(copy.failed)} failed"
            + (f": {_failures_text(copy.failed)}" if copy.failed else "")
        )
        rows.append(Row(f"bucket {copy.bucket}", status, detail))
        for check in copy.checks:
            rows.append(
                Row(f"check: {check.name}", Status.OK if check.ok else Status.FAIL, check.detail)
            )
    attachments: tuple[Attachment, ...] = ()
    if len(failures) > SHOW_KEYS:
        listing = "\n".join(f"{display_key(f.key, 1024)}\t{f.reason}" for f in failures)
        attachments = (
            Attachment(
                filename=f"minio-backup-{run_id}-failures.txt",
                content=(listing + "\n").encode(),
                title=f"MinIO backup #{run_id}: {len(failures)} failure(s)",
            ),
        )
    return Result(
        ok=report.verified,
        title=title,
        rows=tuple(rows),
        attachments=attachments,
        data={
            "run": run_id,
            "listed": report.listed,
            "copied": len(report.copied),
            "skipped": report.skipped,
            "failed": len(failures),
            "deleted": len(report.deleted),
            "bytes": report.bytes,
            "seconds": report.seconds,
            "verified": report.verified,
        },
    )


# --- /hq minio backups ----------------------------------------------------------------------------
parse_limit = whole_number(1, LIST_MAX, "runs")  # --limit


def _list_plan(args: Mapping[str, Any], ctx: Context) -> Plan:
    limit = int(args.get("limit") or LIST_DEFAULT)
    target = backup_dir(ctx.settings)
    return Plan(
        command="minio backups",
        summary=f"List the last {limit} MinIO mirror run(s) and what {target} holds",
        targets=(str(target),),
        data={"limit": limit, "target": str(target), "bucket": ctx.settings.hq_s3_bucket},
    )


def _run_row(run: MirrorRun) -> Row:
    status = {
        RunState.SUCCEEDED: Status.OK,
        RunState.FAILED: Status.FAIL,
    }.get(run.state, Status.WARN)
    started = run.started_at
    when = f"{started:%Y-%m-%d %H:%M} UTC" if started else "?"
    copy = f", also to bucket {run.mirror_bucket}" if run.mirror_bucket else ""
    detail = (
        f"{run.state}; {run.copied} copied, {run.skipped} unchanged, {run.failed} failed, "
        f"{run.deleted} deleted in bucket, {human_bytes(run.bytes)}, {run.duration_s:.1f} s; "
        f"verified: {'yes' if run.verified else 'no'}{copy}"
    )
    return Row(f"#{run.id} {when}", status, detail)


def _list_execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
    runs = MirrorRuns(ctx.governance.engine).recent(int(plan.data["limit"]))
    target = Path(str(plan.data["target"]))
    if target.is_dir():
        files, size = folder_usage(target)
        folder = f"{target} holds {files} file(s), {human_bytes(size)}"
        try:
            manifest = Manifest.load(target / MANIFEST_NAME, str(plan.data["bucket"]))
            folder += f"; the manifest records {len(manifest.objects)} object(s)"
        except ManifestError as exc:
            folder += f"; manifest: {exc}"
    else:
        folder = f"{target} does not exist yet"
    title = f"{len(runs)} MinIO mirror run(s)" if runs else "No MinIO mirror run yet."
    return Result(ok=True, title=title, text=folder + ".", rows=tuple(_run_row(r) for r in runs))


SPECS = (
    CommandSpec(
        name="minio backup",
        summary="Mirror the uploads bucket into the backup folder (incremental, verified).",
        options=(
            Option(
                "--verify-all",
                flag=True,
                default=False,
                help="also read back every unchanged file and compare its SHA-256",
            ),
        ),
        plan=_backup_plan,
        execute=_backup_execute,
        section="MinIO backup",
    ),
    CommandSpec(
        name="minio backups",
        summary="List recent MinIO mirror runs and what the backup folder holds.",
        options=(
            Option(
                "--limit",
                parse=parse_limit,
                default=LIST_DEFAULT,
                metavar="N",
                help=f"runs to show, 1 to {LIST_MAX} (default {LIST_DEFAULT})",
            ),
        ),
        plan=_list_plan,
        execute=_list_execute,
        section="MinIO backup",
    ),
)
