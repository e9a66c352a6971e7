"""MinIO mirror: first mirror of N small objects versus a second mirror with nothing changed,
side by side in one run, through the console door of a real bot (SQLite catalogue) against the
sandbox's S3 stand-in (moto on 127.0.0.1:59000).

The objects go into a bench bucket of their own (``hq-bench-mirror-<random>``, set as
HQ_S3_BUCKET), never into ``harmoniq-uploads``; the bucket and the mirror folder are removed at
the end, whatever happens.

Run (the sandbox must be up: ``bash sandbox/sandbox.sh up``):
    .venv/bin/python -m bench.mirror_bench [--objects 5000] [--size 1024] [--workers 4]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject

from approvals.db import make_engine
from bot.core import Bot
from bot.settings import load_settings
from commands.infra import Infra
from commands.infra.envfile import EnvFile
from commands.minio_backup import MirrorRuns
from tests.integration.conftest import (
    DEPLOY_DIR,
    ROOT,
    SANDBOX_ENV,
    run_console,
    sandbox_healthy,
    sandbox_is_ours,
)

ENDPOINT = "127.0.0.1:59000"


def _client(connections: int) -> Minio:
    env = EnvFile(DEPLOY_DIR / ".env").read()
    return Minio(
        ENDPOINT,
        access_key=env["MINIO_ACCESS_KEY"],
        secret_key=env["MINIO_SECRET_KEY"],
        secure=False,
        http_client=urllib3.PoolManager(maxsize=connections),
    )


def _fill(client: Minio, bucket: str, count: int, size: int) -> float:
    """Upload ``count`` objects of ``size`` random bytes; return the seconds it took."""
    started = time.monotonic()

    def put(i: int) -> None:
        data = os.urandom(size)
        key = f"rooms/{i % 50:02}/upload-{i:05}.bin"
        client.put_object(bucket, key, io.BytesIO(data), len(data))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, range(count)))
    return time.monotonic() - started


def _drop(client: Minio, bucket: str) -> None:
    if not client.bucket_exists(bucket):
        return
    keys = [DeleteObject(o.object_name) for o in client.list_objects(bucket, recursive=True)]
    for start in range(0, len(keys), 1000):
        errors = list(client.remove_objects(bucket, keys[start : start + 1000]))
        if errors:
            print(f"warning: {len(errors)} object(s) could not be deleted", file=sys.stderr)
    client.remove_bucket(bucket)


def _mirror(bot: Bot, number: int) -> tuple[float, str]:
    started = time.monotonic()
    code, out = run_console(bot, "/hq minio backup")
    elapsed = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"mirror {number} failed:\n{out}")
    return elapsed, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per object")
    parser.add_argument("--workers", type=int, default=4, help="HQ_MINIO_BACKUP_WORKERS")
    args = parser.parse_args()
    if not (sandbox_is_ours() and sandbox_healthy()):
        raise SystemExit("the sandbox is not up and healthy: bash sandbox/sandbox.sh up")
    os.chdir(ROOT)  # sandbox/hq-bot.env has paths relative to the repository root
    bucket = f"hq-bench-mirror-{uuid.uuid4().hex[:10]}"
    client = _client(16)
    work = Path(tempfile.mkdtemp(prefix="hq-mirror-bench-"))
    bot: Bot | None = None
    try:
        client.make_bucket(bucket)
        upload = _fill(client, bucket, args.objects, args.size)
        settings = load_settings(
            SANDBOX_ENV,
            hq_database_url=f"sqlite:///{work}/hq-bot.db",
            hq_s3_bucket=bucket,
            hq_minio_backup_dir=str(work / "minio"),
            hq_minio_backup_workers=args.workers,
        )
        bot = Bot.create(settings, infra=Infra(settings))
        first, _ = _mirror(bot, 1)
        second, _ = _mirror(bot, 2)
        runs = MirrorRuns(make_engine(settings.hq_database_url)).recent(2)
        again, once = runs[0], runs[1]
        ratio = second / first
        print(f"objects: {args.objects} x {args.size} B in bucket {bucket} (upload {upload:.1f} s)")
        print(f"workers: {args.workers}; machine: {os.cpu_count()} CPU(s)")
        print("| run | copied | unchanged | bytes | run duration | console wall time | verified |")
        print("|---|---|---|---|---|---|---|")
        for name, run, wall in (("first", once, first), ("second", again, second)):
            print(
                f"| {name} | {run.copied} | {run.skipped} | {run.bytes} | {run.duration_s:.2f} s "
                f"| {wall:.2f} s | {'yes' if run.verified else 'no'} |"
            )
        print(f"second / first (wall time): {ratio:.3f}")
        ok = (
            once.copied == args.objects
            and again.copied == 0
            and again.skipped == args.objects
            and ratio < 0.1
        )
        print("PASS: the second mirror copied nothing and took under a tenth" if ok else "FAIL")
        if not ok:
            raise SystemExit(1)
    finally:
        if bot is not None:
            bot.close()
            bot.infra.close()
        _drop(client, bucket)
        shutil.rmtree(work, ignore_errors=True)
        print(f"cleaned up: bucket {bucket} removed, {work} deleted")


if __name__ == "__main__":
    main()
