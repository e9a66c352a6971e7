"""Backup throughput and memory: the runbook's raw ``docker compose exec -T postgres pg_dump
--format=custom > file`` against ``/hq backup now`` through hq-bot's real command path (the
console door: parse, policy, audit, plan, worker pool, lock, snapshot + counts, pg_dump through
the Docker Engine, SHA-256, atomic file, S3 multipart upload, full-read check), side by side on
the same database.

The bot runs in a subprocess of its own so its peak RSS (``ru_maxrss`` and ``VmHWM``) is its
alone. The database is the sandbox's PostgreSQL, grown by a table of about ``--size-mb`` MB
(generate_series and md5 text, so the dump compresses about as much as chat messages do); the
table is dropped at the end, whatever happens.

Run (sandbox up): .venv/bin/python -m bench.backup_bench [--size-mb 1024] [--rounds 2]
                  [--no-s3] [--encrypt]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_ENV = ROOT / "sandbox" / "hq-bot.env"
COMPOSE = (
    "docker",
    "compose",
    "-p",
    "harmoniq-sandbox",
    "-f",
    str(ROOT / "sandbox" / "run" / "harmoniq" / "docker-compose.yml"),
)
TABLE = "hq_bench_backup"
ROW_BYTES = 200  # heap bytes per row of the table below, measured


def _pg() -> Any:
    import psycopg

    from commands.infra.envfile import EnvFile

    env = EnvFile(ROOT / "sandbox" / "run" / "harmoniq" / ".env").read()
    return psycopg.connect(
        host="127.0.0.1",
        port=55432,
        user=env["DB_USER"],
        password=env["DB_PASSWORD"],
        dbname=env["DB_NAME"],
        autocommit=True,
    )


def make_table(size_mb: int) -> int:
    """Create the bench table of about ``size_mb`` MB; return its size in bytes."""
    rows = size_mb * 1024 * 1024 // ROW_BYTES
    with _pg() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE UNLOGGED TABLE {TABLE} (id bigint, body text, at timestamptz)")
        # unlogged: quick to fill and no 1 GB of WAL; pg_dump dumps its rows all the same.
        # md5 hex of the row number, four times shuffled: compresses to roughly half, as text does
        conn.execute(
            f"INSERT INTO {TABLE} SELECT g, md5(g::text) || ' ' || md5((g * 31)::text) || ' ' "
            "|| md5((g * 17)::text) || ' ' || md5((g * 7)::text) || ' message ' || g, "
            f"now() - g * interval '1 second' FROM generate_series(1, {rows}) g"
        )
        size = conn.execute(f"SELECT pg_total_relation_size('{TABLE}')").fetchone()
    return int(size[0]) if size else 0


def drop_table(patience: float = 300.0) -> None:
    """Drop the bench table, waiting for PostgreSQL when it is restarting (other tests may
    restart it)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            with _pg() as conn:
                conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def database_size() -> int:
    with _pg() as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def _cgroup_cpu(service: str) -> float:
    """CPU seconds used so far by a sandbox container (cgroup v1 cpuacct, or v2 cpu.stat)."""
    cid = subprocess.run(
        ("docker", "inspect", "-f", "{{.Id}}", f"harmoniq-sandbox-{service}-1"),
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for v2 in (
        Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"),
        Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat"),
    ):
        if v2.exists():
            usage = v2.read_text().split()[1]
            return int(usage) / 1e6
    return float("nan")


def _process_cpu(name: str) -> float:
    found = subprocess.run(("pgrep", "-x", name), capture_output=True, text=True, check=False)
    total = 0.0
    for pid in found.stdout.split():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def cpu_meter() -> dict[str, float]:
    """CPU seconds so far of the pieces a backup uses (others' work on the same machine adds
    to them too; compare raw and hq-bot rounds side by side)."""
    return {
        "postgres": _cgroup_cpu("postgres"),
        "s3": _cgroup_cpu("minio"),
        "dockerd": _process_cpu("dockerd"),
    }


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


def raw_dump(target: Path) -> tuple[float, int]:
    """The guide's manual backup: return (seconds, bytes)."""
    started = time.monotonic()
    with open(target, "wb") as out:
        subprocess.run(
            (
                *COMPOSE,
                "exec",
                "-T",
                "postgres",
                "pg_dump",
                "-U",
                "harmoniq",
                "-d",
                "harmoniq",
                "--format=custom",
            ),
            stdout=out,
            check=True,
        )
    return time.monotonic() - started, target.stat().st_size


def bot_dump(folder: Path, s3: bool, key: str | None) -> dict[str, Any]:
    """``/hq backup now`` in a child process; return what it measured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HQ_", "SLACK_"))}
    args = [sys.executable, "-m", "bench.backup_bench", "--child", str(folder)]
    args += [] if s3 else ["--no-s3"]
    if key:
        env["HQ_BACKUP_KEY"] = key
    started = time.monotonic()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"the bot's backup failed:\n{proc.stdout}\n{proc.stderr}")
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    report["process_seconds"] = wall
    return report


def child(folder: Path, s3: bool) -> None:
    """Inside the child: one ``/hq backup now`` through the console door, then a JSON line."""
    import io

    from bot import console
    from bot.core import Bot
    from bot.settings import load_settings
    from commands.infra import Infra

    overrides: dict[str, Any] = {
        "hq_database_url": f"sqlite:///{folder}/hq-bot.db",
        "hq_backup_dir": str(folder / "backups"),
    }
    if not s3:
        overrides["hq_backup_bucket"] = ""
    settings = load_settings(SANDBOX_ENV, **overrides)
    bot = Bot.create(settings, infra=Infra(settings))
    out = io.StringIO()
    started = time.monotonic()
    code = console.run(bot, "bench", io.StringIO("/hq backup now\n"), out)
    seconds = time.monotonic() - started
    bot.close()
    bot.infra.close()
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    text = out.getvalue()
    if code != 0:
        print(text, file=sys.stderr)
        raise SystemExit(1)
    size = sum(p.stat().st_size for p in (folder / "backups").iterdir())
    print(
        json.dumps(
            {
                "command_seconds": seconds,
                "bytes": size,
                "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "cpu_seconds": _own_cpu(),
                "vmhwm_kb": hwm,
                "verified": ", verified" in text,
            }
        )
    )


def _own_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _remove_bench_objects(keys: list[str]) -> None:
    if not keys:
        return
    from bot.settings import load_settings
    from commands.infra.s3 import S3

    settings = load_settings(SANDBOX_ENV)
    from commands.infra.envfile import EnvFile

    env = EnvFile(ROOT / "sandbox" / "run" / "harmoniq" / ".env")
    client = S3(settings.hq_s3_endpoint, settings.hq_backup_bucket, env.read, 60).client
    for key in keys:
        client.remove_object(settings.hq_backup_bucket, key)


def _cpu_text(used: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.1f}" for k, v in used.items()) + " s"


def _median_cpu(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} vCPU {cpu}, {memory:.0f} GiB RAM, {system}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-s3", action="store_true", help="HQ_BACKUP_BUCKET=none")
    parser.add_argument("--encrypt", action="store_true", help="with HQ_BACKUP_KEY set")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), s3=not args.no_s3)
        return
    key = base64.b64encode(os.urandom(32)).decode() if args.encrypt else None
    work = Path(tempfile.mkdtemp(prefix="hq-backup-bench-"))
    keys: list[str] = []
    raw_times: list[float] = []
    bot_runs: list[dict[str, Any]] = []
    raw_cpu: list[dict[str, float]] = []
    bot_cpu: list[dict[str, float]] = []
    try:
        started = time.monotonic()
        table = make_table(args.size_mb)
        print(
            f"table {TABLE}: {table / 2**20:.0f} MiB (database {database_size() / 2**20:.0f} "
            f"MiB), made in {time.monotonic() - started:.0f} s",
            flush=True,
        )
        for number in range(args.rounds):
            # alternate the order, so neither always runs on a warmer cache
            order = ("raw", "bot") if number % 2 == 0 else ("bot", "raw")
            for what in order:
                before = cpu_meter()
                if what == "raw":
                    self_before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    seconds, size = raw_dump(work / f"raw-{number}.dump")
                    self_after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    used = cpu_used(before, cpu_meter())
                    used["client"] = (self_after.ru_utime + self_after.ru_stime) - (
                        self_before.ru_utime + self_before.ru_stime
                    )
                    raw_times.append(seconds)
                    raw_cpu.append(used)
                    print(
                        f"round {number + 1}: raw pg_dump   {seconds:6.1f} s  "
                        f"{size / 2**20:7.1f} MiB  cpu {_cpu_text(used)}",
                        flush=True,
                    )
                    (work / f"raw-{number}.dump").unlink()
                    continue
                folder = work / f"bot-{number}"
                folder.mkdir()
                run = bot_dump(folder, s3=not args.no_s3, key=key)
                used = cpu_used(before, cpu_meter())
                used["client"] = run["cpu_seconds"]
                bot_runs.append(run)
                bot_cpu.append(used)
                if not args.no_s3:
                    names = [p.name for p in (folder / "backups").iterdir()]
                    keys += [f"db/{name}" for name in names]
                print(
                    f"round {number + 1}: hq-bot backup {run['command_seconds']:6.1f} s  "
                    f"{run['bytes'] / 2**20:7.1f} MiB  cpu {_cpu_text(used)}  "
                    f"peak RSS {run['vmhwm_kb'] / 1024:.0f} MiB  verified={run['verified']}",
                    flush=True,
                )
                shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        try:
            _remove_bench_objects(keys)
        finally:
            drop_table()
    raw = statistics.median(raw_times)
    bot = statistics.median(r["command_seconds"] for r in bot_runs)
    rss = max(r["vmhwm_kb"] for r in bot_runs) / 1024
    maxrss = max(r["ru_maxrss_kb"] for r in bot_runs) / 1024
    print()
    print(f"machine: {machine()}")
    print(
        f"mode: {'S3 upload to the sandbox (moto)' if not args.no_s3 else 'disk only'}"
        f"{', encrypted' if args.encrypt else ''}; {args.rounds} rounds, medians"
    )
    print(f"raw pg_dump: {raw:.1f} s; hq-bot: {bot:.1f} s; ratio {bot / raw:.3f} (target <= 1.15)")
    print(f"hq-bot peak RSS: VmHWM {rss:.0f} MiB, ru_maxrss {maxrss:.0f} MiB (target < 150)")
    print(f"CPU seconds, raw:    {_cpu_text(_median_cpu(raw_cpu))} (client: docker compose CLI)")
    print(f"CPU seconds, hq-bot: {_cpu_text(_median_cpu(bot_cpu))} (client: the bot process")
    print("  with its pg_restore check; postgres includes the row counts)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
