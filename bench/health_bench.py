"""A health round against the sandbox vs its slowest single check, side by side in one run.

Each check is timed alone (sequentially), then whole rounds (all checks in parallel, as
`/hq health` runs them) are timed; rounds and single checks alternate so both see the same
machine. Reported: the median of the slowest single check and of the round, and their ratio.
Target: round <= 1.2 x slowest check.

Run (sandbox up): .venv/bin/python -m bench.health_bench [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bot.core import Bot, RunContext
from bot.settings import load_settings
from commands.health import health_checks, run_checks
from commands.infra import Infra
from commands.spec import Actor

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    os.chdir(ROOT)
    settings = load_settings(ROOT / "sandbox" / "hq-bot.env", hq_database_url="sqlite:///:memory:")
    infra = Infra(settings)
    bot = Bot.create(settings, infra=infra)
    ctx: RunContext = bot.context(Actor("bench", "bench", "", "console"), "bench")
    timeout = float(settings.hq_health_timeout)
    checks = health_checks(ctx)
    run_checks(checks, timeout)  # warm up connections and caches
    slowest: list[float] = []
    rounds: list[float] = []
    per_check: dict[str, list[float]] = {c.name: [] for c in checks}
    for _ in range(args.rounds):
        times = {}
        for check in checks:
            started = time.perf_counter()
            run_checks([check], timeout)
            times[check.name] = time.perf_counter() - started
            per_check[check.name].append(times[check.name])
        slowest.append(max(times.values()))
        started = time.perf_counter()
        rows = run_checks(checks, timeout)
        rounds.append(time.perf_counter() - started)
        assert all(r.status.value in ("ok", "warn") for r in rows), rows
    bot.close()
    s, r = statistics.median(slowest), statistics.median(rounds)
    print(f"rounds={args.rounds} checks={len(checks)}")
    for name, values in per_check.items():
        print(f"  {name:<18} median {statistics.median(values) * 1000:7.1f} ms")
    print(f"slowest single check: median {s * 1000:.1f} ms")
    print(f"whole round:          median {r * 1000:.1f} ms  (max {max(rounds) * 1000:.1f} ms)")
    print(f"ratio round / slowest check = {r / s:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
