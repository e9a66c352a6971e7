"""``/hq health``: every check of the guide's Health Checks section, run in parallel.

Each check has the same deadline (``HQ_HEALTH_TIMEOUT``). Checks run on daemon threads and the
round waits for none past the deadline: a port that accepts connections and never answers makes
its row FAIL "timed out", and the stuck thread is left behind (its client has its own socket
timeout and ends on its own). The verdict is the worst status.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from commands.infra.compose import ComposeArgv
from commands.redact import default_redactor
from commands.spec import CommandSpec, Context, Plan, Progress, Result, Row, Status, Step, UserError

log = logging.getLogger(__name__)

SEVERITY = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARN: 2, Status.FAIL: 3}
HEALTHY_WORDS = {"ok", "healthy", "pass", "up"}
DETAIL_LIMIT = 200

CheckFn = Callable[[], "Row | Sequence[Row]"]


@dataclass(frozen=True)
class Check:
    """A named check. ``run`` returns one row or several (a row without ``seconds`` gets the
    check's duration) and may raise UserError, whose message becomes a FAIL row."""

    name: str
    run: CheckFn


def worst(statuses: Sequence[Status]) -> Status:
    """Given statuses, return the worst (FAIL > WARN > UNKNOWN > OK); OK when there are none."""
    return max(statuses, key=SEVERITY.__getitem__, default=Status.OK)


def short(text: str, limit: int = DETAIL_LIMIT) -> str:
    """Given a detail text, return it on one line and at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run_one(check: Check, future: Future[list[Row]]) -> None:
    started = time.monotonic()
    try:
        produced = check.run()
        rows = [produced] if isinstance(produced, Row) else list(produced)
    except UserError as err:
        rows = [Row(check.name, Status.FAIL, short(err.message))]
    except Exception as exc:
        log.exception("check %s failed", check.name)
        rows = [
            Row(check.name, Status.FAIL, f"the check failed unexpectedly ({type(exc).__name__})")
        ]
    elapsed = time.monotonic() - started
    redact = default_redactor()  # details may quote a service's own words (backend /health)
    future.set_result(
        [
            replace(r, detail=redact(r.detail), seconds=elapsed if r.seconds is None else r.seconds)
            for r in rows
        ]
    )


def run_checks(checks: Sequence[Check], timeout: float) -> list[Row]:
    """Given checks, run them all at once on daemon threads and return their rows in the
    checks' order. A check still running after ``timeout`` seconds gives a FAIL row "timed out
    after N s"; nobody waits for it (a daemon thread never holds the round or the process)."""
    futures: list[Future[list[Row]]] = []
    for check in checks:
        future: Future[list[Row]] = Future()
        future.set_running_or_notify_cancel()
        thread = threading.Thread(
            target=_run_one, args=(check, future), name=f"hq-check-{check.name}", daemon=True
        )
        thread.start()
        futures.append(future)
    wait(futures, timeout=timeout)
    rows: list[Row] = []
    for check, future in zip(checks, futures, strict=True):
        if future.done():
            rows.extend(future.result())
        else:
            rows.append(Row(check.name, Status.FAIL, f"timed out after {timeout:g} s", timeout))
    return rows


# --- the individual checks ------------------------------------------------------------------
def disk_row(name: str, path: Path, threshold: float, note: str = "") -> Row:
    """Given a folder, return its file system's use as ``df`` counts it (used / (used + free)):
    WARN at or above ``threshold`` percent, FAIL when the folder does not exist."""
    if not path.exists():
        return Row(name, Status.FAIL, f"{path} does not exist")
    usage = shutil.disk_usage(path)
    percent = 100.0 * usage.used / max(usage.used + usage.free, 1)
    detail = (
        f"{percent:.0f} % used, {human_bytes(usage.free)} free of {human_bytes(usage.total)}"
        f"{note} (warn at {threshold:g} %)"
    )
    return Row(name, Status.WARN if percent >= threshold else Status.OK, detail)


def human_bytes(value: float) -> str:
    """Given a number of bytes, return it with a binary unit (KiB, MiB, GiB, TiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def container_rows(services: Sequence[str], containers: Sequence[Any]) -> list[Row]:
    """Given the compose file's services and the project's containers, return one row per
    service: FAIL when no container runs or one is unhealthy or stopped, WARN while a health
    check is still starting."""
    rows = []
    for service in services:
        mine = [c for c in containers if c.service == service]
        name = f"container {service}"
        if not mine:
            rows.append(Row(name, Status.FAIL, "no container (the compose file defines it)"))
            continue
        stopped = [c for c in mine if not c.running]
        unhealthy = [c for c in mine if c.running and c.health == "unhealthy"]
        starting = [c for c in mine if c.running and c.health == "starting"]
        running = len(mine) - len(stopped)
        count = f"{running}/{len(mine)} running" if len(mine) > 1 else "running"
        if stopped:
            listed = ", ".join(f"{c.name} {c.state}" for c in stopped)
            rows.append(Row(name, Status.FAIL, f"{running}/{len(mine)} running; {listed}"))
        elif unhealthy:
            rows.append(
                Row(
                    name, Status.FAIL, f"{count}, unhealthy: {', '.join(c.name for c in unhealthy)}"
                )
            )
        elif starting:
            rows.append(Row(name, Status.WARN, f"{count}, health check starting"))
        elif all(c.health == "healthy" for c in mine):
            rows.append(Row(name, Status.OK, f"{count}, healthy"))
        else:
            rows.append(Row(name, Status.OK, f"{count} (no health check)"))
    return rows


def backend_rows(status: int, body: Any, env_jwt: str | None) -> list[Row]:
    """Given the backend's ``/health`` answer (HTTP status and parsed JSON) and the JWT secret
    in ``.env`` (or None), return the backend row and a row per sub-check it reports."""
    if not isinstance(body, dict):
        return [
            Row("backend /health", Status.FAIL, f"HTTP {status}, the body is not a JSON object")
        ]
    word = str(body.get("status", "")).lower()
    healthy = status == 200 and word in HEALTHY_WORDS
    detail = f"HTTP {status}, status {short(word or '?', 40)}"
    verdict = Status.OK if healthy else Status.FAIL
    fingerprint = body.get("jwt_secret_fingerprint")
    if isinstance(fingerprint, str) and env_jwt:
        if _same_secret(fingerprint, env_jwt):
            detail += "; JWT secret matches .env"
        else:
            detail += "; JWT secret differs from .env (the backend has not been recreated since?)"
            verdict = worst([verdict, Status.WARN])
    rows = [Row("backend /health", verdict, detail)]
    for key, value in body.items():
        if isinstance(value, dict) and "ok" in value:
            ok = value.get("ok") is True
            sub = short(str(value.get("detail", "")) or ("ok" if ok else "failing"))
            rows.append(Row(f"backend /health: {key}", Status.OK if ok else Status.FAIL, sub))
    return rows


def _same_secret(fingerprint: str, secret: str) -> bool:
    digest = fingerprint.strip().lower().removeprefix("sha256:")
    full = hashlib.sha256(secret.encode()).hexdigest()
    return len(digest) >= 8 and full.startswith(digest)


def health_checks(ctx: Context) -> list[Check]:
    """Given a context, return the health checks of the guide, in the order they are shown."""
    settings = ctx.settings
    infra = ctx.infra

    def containers() -> list[Row]:
        services = infra.compose.services()
        return container_rows(services, infra.docker.containers())

    def backend() -> list[Row]:
        resp = infra.http.get(settings.hq_backend_url + "/health")
        try:
            body = resp.json()
        except UserError:
            body = None
        try:
            jwt: str | None = infra.env.read().get("JWT_SECRET")
        except UserError:
            jwt = None
        return backend_rows(resp.status, body, jwt)

    def postgres() -> Row:
        version = infra.postgres.ping()
        return Row("postgres", Status.OK, f"accepting connections (SELECT 1), version {version}")

    def redis() -> Row:
        infra.redis.ping()
        return Row("redis", Status.OK, "PONG")

    def minio() -> Row:
        ok, how = infra.s3.live(infra.http)
        return Row("minio", Status.OK if ok else Status.FAIL, how)

    threshold = float(settings.hq_alert_disk_percent)
    return [
        Check("containers", containers),
        Check("backend /health", backend),
        Check("postgres", postgres),
        Check("redis", redis),
        Check("minio", minio),
        Check(
            "disk docker root",
            lambda: disk_row("disk docker root", Path(settings.hq_docker_root), threshold),
        ),
        Check(
            "disk backups",
            lambda: disk_row("disk backups", Path(settings.hq_backup_dir), threshold),
        ),
    ]


def verdict_result(subject: str, rows: Sequence[Row], seconds: float) -> Result:
    """Given rows, return the result whose verdict is the worst row."""
    verdict = worst([r.status for r in rows])
    failed = [r.name for r in rows if r.status == Status.FAIL]
    warned = [r.name for r in rows if r.status == Status.WARN]
    if verdict == Status.FAIL:
        title = f"{subject} is failing: {len(failed)} of {len(rows)} checks failed"
    elif verdict == Status.WARN:
        title = f"{subject} has warnings: {len(warned)} of {len(rows)} checks"
    else:
        title = f"{subject} is healthy: {len(rows)} checks passed"
    return Result(
        ok=verdict != Status.FAIL,
        title=f"{title} ({seconds:.1f} s)",
        rows=tuple(rows),
        data={"verdict": verdict.value, "failed": failed, "warnings": warned},
    )


def _plan(args: Mapping[str, Any], ctx: Context) -> Plan:
    settings = ctx.settings
    timeout = float(settings.hq_health_timeout)
    steps = (
        Step("list the compose services", ComposeArgv.from_settings(settings).services()),
        Step("containers running and healthy (Docker Engine)"),
        Step(f"GET {settings.hq_backend_url}/health"),
        Step(f"PostgreSQL {settings.hq_postgres_host}:{settings.hq_postgres_port}: SELECT 1"),
        Step("Redis PING"),
        Step(f"MinIO {settings.hq_s3_endpoint}/minio/health/live"),
        Step(f"disk space of {settings.hq_docker_root} and {settings.hq_backup_dir}"),
    )
    return Plan(
        command="health",
        summary=f"run every health check in parallel ({timeout:g} s each)",
        steps=steps,
        data={"timeout": timeout},
    )


def _execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
    started = time.monotonic()
    rows = run_checks(health_checks(ctx), float(plan.data["timeout"]))
    return verdict_result("Harmoniq", rows, time.monotonic() - started)


SPECS = (
    CommandSpec(
        name="health",
        summary="Check containers, the backend, PostgreSQL, Redis, MinIO and disk space.",
        plan=_plan,
        execute=_execute,
        section="Health",
    ),
)
