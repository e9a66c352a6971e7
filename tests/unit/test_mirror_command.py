"""``/hq minio backup`` and ``/hq minio backups``: exact plans, execute with a fake store and a
real (SQLite, migrated) catalogue, and what the user reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from approvals.db import make_engine, upgrade
from commands import minio_backup
from commands.parser import parse
from commands.registry import REGISTRY
from commands.spec import Actor, Status, Step, UserError
from tests.unit.test_mirror import FakeStore


@dataclass
class Governance:
    engine: Engine


@dataclass
class Ctx:
    settings: Any
    governance: Any = None
    infra: Any = None
    actor: Actor = field(default_factory=lambda: Actor("U0TEST", "tester"))
    operation_id: str = "op-test"
    registry: Any = field(default_factory=dict)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path}/bot.db")
    upgrade(engine)
    return engine


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    fake = FakeStore(harmoniq_uploads={"a.txt": b"hello", "photos/cat.jpg": b"meow" * 10})
    monkeypatch.setattr(minio_backup, "make_store", lambda _ctx, _workers: fake)
    return fake


def _ctx(make_settings: Any, engine: Engine | None = None, **overrides: Any) -> Ctx:
    governance = Governance(engine) if engine is not None else None
    return Ctx(settings=make_settings(**overrides), governance=governance)


def _run(text: str, ctx: Ctx) -> Any:
    parsed = parse(text, REGISTRY)
    plan = parsed.spec.plan(parsed.args, ctx)
    return plan, parsed.spec.execute(plan, ctx, lambda _line: None)


def test_the_plan_says_what_will_be_mirrored_where(make_settings: Any, tmp_path: Path) -> None:
    ctx = _ctx(make_settings, hq_backup_dir=tmp_path / "backups")
    parsed = parse("minio backup", REGISTRY)
    plan = parsed.spec.plan(parsed.args, ctx)
    target = tmp_path / "backups" / "minio"
    assert plan.summary == f"Mirror bucket harmoniq-uploads to {target}"
    assert plan.targets == ("s3://harmoniq-uploads", str(target))
    assert plan.steps[0] == Step(
        "List bucket harmoniq-uploads at http://127.0.0.1:9000 (ListObjectsV2, paginated)"
    )
    assert plan.data == {
        "bucket": "harmoniq-uploads",
        "target": str(target),
        "mirror_bucket": "",
        "workers": 4,
        "verify_all": False,
    }


def test_the_plan_names_the_mirror_bucket_and_a_relative_folder_is_made_absolute(
    make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ctx = _ctx(
        make_settings,
        hq_minio_backup_dir="rel/minio",
        hq_minio_mirror_bucket="uploads-mirror",
        hq_minio_backup_workers=2,
    )
    parsed = parse("minio backup --verify-all", REGISTRY)
    plan = parsed.spec.plan(parsed.args, ctx)
    assert plan.data["target"] == str(tmp_path / "rel" / "minio")
    assert plan.targets[-1] == "s3://uploads-mirror"
    assert plan.steps[3] == Step(
        "Copy new and changed objects to bucket uploads-mirror (server-side)"
    )
    assert "every unchanged file read back too" in plan.steps[2].title
    assert plan.data["workers"] == 2 and plan.data["verify_all"] is True


def test_the_mirror_bucket_must_not_be_the_uploads_bucket(make_settings: Any) -> None:
    from bot.settings import SettingsError

    with pytest.raises(SettingsError, match="HQ_MINIO_MIRROR_BUCKET"):
        make_settings(hq_minio_mirror_bucket="harmoniq-uploads")
    assert make_settings(hq_minio_mirror_bucket="none").hq_minio_mirror_bucket == ""


def test_backup_runs_verifies_and_records_the_run(
    make_settings: Any, engine: Engine, store: FakeStore, tmp_path: Path
) -> None:
    ctx = _ctx(make_settings, engine, hq_minio_backup_dir=tmp_path / "m")
    _plan, result = _run("minio backup", ctx)
    assert result.ok, result
    assert result.title.startswith("MinIO backup #1 verified: 2 copied, 0 unchanged, 0 failed")
    assert result.data["copied"] == 2 and result.data["bytes"] == 45
    rows = {r.name: r for r in result.rows}
    assert rows["check: object count"].status == Status.OK
    assert rows["copied"].detail.startswith("2 object(s), 45 B: `a.txt`, `photos/cat.jpg`")
    (run,) = minio_backup.MirrorRuns(engine).recent(10)
    assert (run.id, run.state, run.copied, run.skipped, run.failed, run.verified) == (
        1,
        "succeeded",
        2,
        0,
        0,
        True,
    )
    assert run.bytes == 45 and run.target == str(tmp_path / "m") and run.op_id == "op-test"
    assert run.finished_at is not None and run.requested_by == "tester"

    _plan, again = _run("minio backup", ctx)
    assert again.title.startswith("MinIO backup #2 verified: 0 copied, 2 unchanged, 0 failed")


def test_a_run_with_failures_is_not_ok_and_lists_the_keys(
    make_settings: Any, engine: Engine, store: FakeStore, tmp_path: Path
) -> None:
    for n in range(12):
        store.buckets["harmoniq-uploads"][f"../evil{n:02}"] = b"x"
    ctx = _ctx(make_settings, engine, hq_minio_backup_dir=tmp_path / "m")
    _plan, result = _run("minio backup", ctx)
    assert not result.ok
    assert "NOT verified: 2 copied, 0 unchanged, 12 failed" in result.title
    failed = next(r for r in result.rows if r.name == "failed")
    assert failed.status == Status.FAIL
    assert failed.detail.startswith("12: `../evil00` (unsafe key: has a '..' path part)")
    assert failed.detail.endswith("; and 2 more (attached)")
    (attachment,) = result.attachments
    assert attachment.content.decode().count("\n") == 12
    (run,) = minio_backup.MirrorRuns(engine).recent(1)
    assert run.state == "failed" and run.failed == 12 and not run.verified
    assert "failed: `../evil00`" in run.detail


def test_a_run_that_cannot_start_is_recorded_as_failed(
    make_settings: Any, engine: Engine, store: FakeStore, tmp_path: Path
) -> None:
    target = tmp_path / "m"
    target.mkdir()
    (target / ".hq-mirror-manifest.json").write_text('{"version": 1, "bucket": "x", "objects": {}}')
    ctx = _ctx(make_settings, engine, hq_minio_backup_dir=target)
    with pytest.raises(UserError, match=r"MinIO backup #1 failed: .*mirror of bucket 'x'"):
        _run("minio backup", ctx)
    (run,) = minio_backup.MirrorRuns(engine).recent(1)
    assert run.state == "failed" and "mirror of bucket 'x'" in run.detail


def test_backups_lists_runs_newest_first_with_the_folder_contents(
    make_settings: Any, engine: Engine, store: FakeStore, tmp_path: Path
) -> None:
    ctx = _ctx(make_settings, engine, hq_minio_backup_dir=tmp_path / "m")
    _run("minio backup", ctx)
    store.buckets["harmoniq-uploads"]["new"] = b"12345"
    _run("minio backup", ctx)
    _plan, result = _run("minio backups --limit 5", ctx)
    assert result.ok and result.title == "2 MinIO mirror run(s)"
    assert [r.name.split()[0] for r in result.rows] == ["#2", "#1"]
    assert "succeeded; 1 copied, 2 unchanged, 0 failed" in result.rows[0].detail
    assert "verified: yes" in result.rows[0].detail
    assert result.text == (
        f"{tmp_path / 'm'} holds 3 file(s), 50 B; the manifest records 3 object(s)."
    )


def test_backups_before_any_run(make_settings: Any, engine: Engine, tmp_path: Path) -> None:
    ctx = _ctx(make_settings, engine, hq_minio_backup_dir=tmp_path / "none")
    _plan, result = _run("minio backups", ctx)
    assert result.title == "No MinIO mirror run yet."
    assert result.text == f"{tmp_path / 'none'} does not exist yet."


def test_limit_is_checked() -> None:
    with pytest.raises(UserError, match="from 1 to 100"):
        parse("minio backups --limit 0", REGISTRY)
