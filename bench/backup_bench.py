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
                  [--mode disk|s3|both] [--encrypt] [--contention]

``--contention`` measures the machine instead of hq-bot: the raw dump alone and beside a
busy loop at SCHED_IDLE priority (what it loses is what any concurrent work costs pg_dump).
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
    import logging

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
    phases: dict[str, float] = {}

    class Phases(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            args = record.args
            if record.msg == "backup %s phases (s): %s" and isinstance(args, tuple):
                marks = args[1]
                if isinstance(marks, dict):
                    phases.update({str(k): float(v) for k, v in marks.items()})

    ops_log = logging.getLogger("commands.backup_ops")
    ops_log.addHandler(Phases(logging.INFO))
    ops_log.setLevel(logging.INFO)
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
                "phases": phases,
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


def busy_loop_idle() -> subprocess.Popen[bytes]:
    """Start a CPU-bound loop at the lowest priority Linux has (SCHED_IDLE): it should only
    take CPU time that nothing else wants."""
    spin = subprocess.Popen((sys.executable, "-c", "while True: pass"))
    os.sched_setscheduler(spin.pid, os.SCHED_IDLE, os.sched_param(0))
    return spin


def contention(work: Path, rounds: int) -> None:
    """The machine's own limit: the raw dump alone, and beside an idle-priority busy loop."""
    alone: list[float] = []
    beside: list[float] = []
    for number in range(rounds):
        order = ("alone", "beside") if number % 2 == 0 else ("beside", "alone")
        for what in order:
            spin = busy_loop_idle() if what == "beside" else None
            try:
                seconds, _size = raw_dump(work / "raw.dump")
            finally:
                if spin is not None:
                    spin.kill()
                    spin.wait()
            (work / "raw.dump").unlink()
            (alone if what == "alone" else beside).append(seconds)
            print(f"round {number + 1}: raw pg_dump {what:6s} {seconds:6.1f} s", flush=True)
    a, b = statistics.median(alone), statistics.median(beside)
    print()
    print(f"machine: {machine()}")
    print(
        f"raw pg_dump alone {a:.1f} s; beside a SCHED_IDLE busy loop {b:.1f} s; "
        f"ratio {b / a:.3f} ({(b - a) / b:.2f} s of pg_dump time lost per second of idle work)"
    )


MODES = {"disk": "disk only", "s3": "disk + S3 upload to the sandbox (moto)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--mode",
        choices=("disk", "s3", "both"),
        default="both",
        help="disk: HQ_BACKUP_BUCKET empty; s3: the sandbox bucket; both: each round runs both",
    )
    parser.add_argument("--no-s3", action="store_true", help="the same as --mode disk")
    parser.add_argument("--encrypt", action="store_true", help="with HQ_BACKUP_KEY set")
    parser.add_argument(
        "--contention",
        action="store_true",
        help="measure the machine instead: raw pg_dump alone vs beside an idle-priority loop",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), s3=not args.no_s3)
        return
    modes = ["disk"] if args.no_s3 else ["disk", "s3"] if args.mode == "both" else [args.mode]
    key = base64.b64encode(os.urandom(32)).decode() if args.encrypt else None
    work = Path(tempfile.mkdtemp(prefix="hq-backup-bench-"))
    keys: list[str] = []
    raw_times: list[float] = []
    bot_runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    raw_cpu: list[dict[str, float]] = []
    bot_cpu: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    try:
        started = time.monotonic()
        table = make_table(args.size_mb)
        print(
            f"table {TABLE}: {table / 2**20:.0f} MiB (database {database_size() / 2**20:.0f} "
            f"MiB), made in {time.monotonic() - started:.0f} s",
            flush=True,
        )
        if args.contention:
            contention(work, args.rounds)
            return
        for number in range(args.rounds):
            # rotate the order, so none always runs first or on a warmer cache
            order = ["raw", *modes]
            shift = number % len(order)
            for what in order[shift:] + order[:shift]:
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
                        f"round {number + 1}: raw pg_dump        {seconds:6.1f} s  "
                        f"{size / 2**20:7.1f} MiB  cpu {_cpu_text(used)}",
                        flush=True,
                    )
                    (work / f"raw-{number}.dump").unlink()
                    continue
                folder = work / f"bot-{number}-{what}"
                folder.mkdir()
                run = bot_dump(folder, s3=what == "s3", key=key)
                used = cpu_used(before, cpu_meter())
                used["client"] = run["cpu_seconds"]
                bot_runs[what].append(run)
                bot_cpu[what].append(used)
                if what == "s3":
                    names = [p.name for p in (folder / "backups").iterdir()]
                    keys += [f"db/{name}" for name in names]
                phases = run["phases"]
                dumped = phases.get("pg_dump done", float("nan"))
                print(
                    f"round {number + 1}: hq-bot backup {what:4s} {run['command_seconds']:6.1f} s  "
                    f"{run['bytes'] / 2**20:7.1f} MiB  cpu {_cpu_text(used)}  "
                    f"peak RSS {run['vmhwm_kb'] / 1024:.0f} MiB  verified={run['verified']}  "
                    f"(pg_dump streamed in {dumped:.1f} s, then check "
                    f"+{phases.get('check done', dumped) - dumped:.1f} s, S3 "
                    f"+{phases.get('upload done', dumped) - dumped:.1f} s)",
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
    print()
    print(f"machine: {machine()}")
    print(f"{args.rounds} rounds{', encrypted' if args.encrypt else ''}, medians")
    print(f"raw pg_dump: {raw:.1f} s")
    print(f"CPU seconds, raw: {_cpu_text(_median_cpu(raw_cpu))} (client: docker compose CLI)")
    for mode in modes:
        runs = bot_runs[mode]
        bot = statistics.median(r["command_seconds"] for r in runs)
        paired = [r["command_seconds"] / t for r, t in zip(runs, raw_times, strict=True)]
        rss = max(r["vmhwm_kb"] for r in runs) / 1024
        maxrss = max(r["ru_maxrss_kb"] for r in runs) / 1024
        print(f"hq-bot, {MODES[mode]}: {bot:.1f} s (target: ratio <= 1.15)")
        print(
            f"  ratio of the medians {bot / raw:.3f}; median of the per-round ratios "
            f"{statistics.median(paired):.3f} (each run against the raw dump of its round: "
            "the machine's drift cancels out)"
        )
        print(f"  per round: {', '.join(f'{x:.2f}' for x in paired)}")
        print(f"  peak RSS: VmHWM {rss:.0f} MiB, ru_maxrss {maxrss:.0f} MiB (target < 150)")
        print(f"  CPU seconds: {_cpu_text(_median_cpu(bot_cpu[mode]))} (client: the bot process")
        print("  with its pg_restore check; postgres includes the row counts)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
