"""Ack latency of the HTTP door: N signed slash commands from C concurrent senders against
`hq-bot serve --http` (a real subprocess on SQLite), with the fake Slack as the Web API.

Run: .venv/bin/python -m bench.ack_latency [--requests 500] [--senders 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.fakeslack import FakeSlack, post_signed, slash_command_body

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-signing-secret-0123456789"
TOKEN = "xoxb-bench-fake"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"bot did not become healthy at {url}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--text", default="help")
    args = parser.parse_args()
    with FakeSlack(token=TOKEN) as fake, tempfile.TemporaryDirectory() as tmp:
        port = _port()
        env = {
            **os.environ,
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": fake.base_url,
            "HQ_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
            "HQ_LOG_LEVEL": "WARNING",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve", "--http", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_healthy(f"http://127.0.0.1:{port}/healthz")
            if os.environ.get("HQ_BENCH_PROFILE"):
                subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "-o",
                        os.environ["HQ_BENCH_PROFILE"],
                        "-f",
                        "raw",
                        "-d",
                        "4",
                        "-p",
                        str(proc.pid),
                    ]
                )
            url = f"http://127.0.0.1:{port}/slack/events"

            def one(i: int) -> tuple[int, float]:
                body = slash_command_body(
                    args.text, user_id=f"U0B{i % 50:04d}", response_url=fake.response_url("bench")
                )
                status, _, elapsed = post_signed(url, body, SECRET)
                return status, elapsed

            for i in range(20):  # warm up
                one(i)
            started = time.monotonic()
            with ThreadPoolExecutor(args.senders) as pool:
                results = list(pool.map(one, range(args.requests)))
            wall = time.monotonic() - started
            server_cpu = _cpu_seconds(proc.pid)
            client_cpu = sum(os.times()[:2])
        finally:
            proc.terminate()
            proc.wait(10)
    latencies = [e * 1000 for s, e in results]
    bad = sum(1 for s, _ in results if s != 200)
    print(f"requests={args.requests} senders={args.senders} text={args.text!r} non_200={bad}")
    print(
        f"p50={percentile(latencies, 50):.1f} ms  p99={percentile(latencies, 99):.1f} ms  "
        f"max={max(latencies):.1f} ms  mean={statistics.mean(latencies):.1f} ms  "
        f"throughput={args.requests / wall:.0f} req/s"
    )
    print(f"cpu: server {server_cpu:.2f} s, bench client {client_cpu:.2f} s, wall {wall:.2f} s")
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
