"""Steps shared by the commands that change the deployment: ``rotate``, ``upgrade``,
``rollback``.

- One change at a time, across every hq-bot sharing the database (:func:`exclusive`).
- compose takes a variable from its caller's environment over ``.env``: a rotation refuses to run
  when hq-bot's own environment sets one of ``.env``'s keys (:func:`guard_compose_env`).
- Health gates poll until a recreated service proves healthy or the time is up, and give up at
  once when its container keeps restarting (:func:`backend_gate`, :func:`service_gate`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from commands.health import backend_rows, short, worst
from commands.infra.backup_store import DatabaseLock
from commands.infra.compose import ComposeArgv
from commands.spec import Context, Progress, Row, Status, UserError

POLL_SECONDS = 1.0
CRASHED = {"restarting", "exited", "dead"}
STOPPED_CODES = {0, 137, 143}  # exited after `docker stop` (SIGTERM, then SIGKILL)

CHANGE_LOCK = "deployment"
CHANGE_WORK = "Another change to the deployment (a rotation, upgrade or rollback)"


@contextlib.contextmanager
def exclusive(ctx: Context, what: str) -> Iterator[None]:
    """Hold the one change-the-deployment slot for ``what`` (``rotate jwt``) while the block
    runs: a lock row in hq-bot's database (a PostgreSQL advisory lock when it is PostgreSQL),
    so replicas sharing the database take turns too. Raise LockBusy (a UserError naming the
    holder and since when) when another rotation, upgrade or rollback holds it."""
    lock = DatabaseLock(ctx.governance.engine, name=CHANGE_LOCK, work=CHANGE_WORK)
    with lock.acquire(f"{ctx.actor.label} ({what})", ctx.operation_id):
        yield


def guard_compose_env(keys: Iterable[str]) -> None:
    """Given the keys of the deployment's ``.env``, raise UserError naming those that hq-bot's
    own environment also sets: compose would take those values over ``.env``."""
    clash = sorted({k for k in keys if k in os.environ and not k.startswith("COMPOSE_")})
    if clash:
        raise UserError(
            f"hq-bot's own environment sets {', '.join(clash)}; docker compose would use "
            "that instead of the deployment's .env. Unset it in hq-bot's environment; "
            "nothing was done."
        )


def compose_argv(ctx: Context) -> ComposeArgv:
    return ComposeArgv.from_settings(ctx.settings)


def recreate_argv(ctx: Context, services: Iterable[str]) -> tuple[str, ...]:
    """Return ``compose up -d --no-deps --force-recreate SERVICES``: a container made anew reads
    ``.env`` again (``restart`` would not)."""
    return compose_argv(ctx).up(list(services), no_deps=True, force_recreate=True)


def deploy_dir(settings: Any) -> Path:
    """Return the deployment's git checkout: HQ_DEPLOY_DIR, else the compose file's folder."""
    folder = settings.hq_deploy_dir or Path(settings.hq_compose_file).parent
    return Path(folder).absolute()


@dataclass(frozen=True)
class Gate:
    """The outcome of a health gate."""

    ok: bool
    detail: str
    seconds: float

    def row(self, name: str) -> Row:
        return Row(name, Status.OK if self.ok else Status.FAIL, self.detail, self.seconds)


def crashed_reason(ctx: Context, service: str) -> str | None:
    """Return why the service's containers are not coming up, or None. A container that keeps
    restarting, or exited by itself (not stopped with SIGTERM/SIGKILL by someone who may start it
    again), will not get better by waiting."""
    for container in ctx.infra.docker.containers(service):
        if container.state not in CRASHED:
            continue
        code: Any = None
        with contextlib.suppress(UserError):
            code = (ctx.infra.docker.inspect(container.id).get("State") or {}).get("ExitCode")
        if container.state == "exited" and code in STOPPED_CODES:
            continue
        return f"{container.name} is {container.state}" + (
            f", exit code {code}" if code is not None else ""
        )
    return None


def poll(
    check: Callable[[], tuple[bool, str]],
    *,
    timeout: float,
    crashed: Callable[[], str | None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Gate:
    """Call ``check`` (returning (ok, detail)) until it is ok or ``timeout`` seconds pass, and
    stop early when ``crashed`` names a reason. Return the gate with the last detail."""
    started = clock()
    detail = "not checked"
    while True:
        try:
            ok, detail = check()
        except UserError as err:
            ok, detail = False, err.message
        if ok:
            return Gate(True, short(detail), clock() - started)
        why = crashed()
        if why:
            return Gate(False, short(f"{why}; last check: {detail}"), clock() - started)
        if clock() - started >= timeout:
            return Gate(False, short(f"not healthy after {timeout:g} s: {detail}"), timeout)
        sleep(POLL_SECONDS)


def _backend_once(ctx: Context, jwt: str | None, old_ids: Collection[str]) -> tuple[bool, str]:
    service = ctx.settings.hq_service_backend
    if old_ids:
        stale = [c.name for c in ctx.infra.docker.containers(service) if c.id in old_ids]
        if stale:
            return False, f"the old container {stale[0]} still runs"
    resp = ctx.infra.http.get(ctx.settings.hq_backend_url + "/health")
    try:
        body = resp.json()
    except UserError:
        body = None
    rows = backend_rows(resp.status, body, jwt)
    verdict = worst([r.status for r in rows])
    failing = [f"{r.name}: {r.detail}" for r in rows if r.status != Status.OK]
    version = body.get("version") if isinstance(body, dict) else None
    detail = rows[0].detail + (f"; version {version}" if version else "")
    if failing:
        detail = "; ".join(failing)
    return verdict == Status.OK, detail


def backend_gate(
    ctx: Context, *, jwt: str | None, timeout: float, old_ids: Collection[str] = ()
) -> Gate:
    """Poll the backend (see :func:`backend_check`) until healthy or ``timeout`` seconds pass;
    give up at once when its container keeps restarting."""
    service = ctx.settings.hq_service_backend
    return poll(
        lambda: _backend_once(ctx, jwt, old_ids),
        timeout=timeout,
        crashed=lambda: crashed_reason(ctx, service),
    )


def container_ids(ctx: Context, service: str) -> set[str]:
    """Return the ids of the service's containers now (to tell a recreated one apart)."""
    return {c.id for c in ctx.infra.docker.containers(service)}


def _service_once(
    ctx: Context, service: str, old_ids: Collection[str], image: str | None
) -> tuple[bool, str]:
    containers = ctx.infra.docker.containers(service)
    if not containers:
        return False, f"no container of {service}"
    for c in containers:
        if c.id in old_ids:
            return False, f"{c.name} is the container from before"
        if image and c.image != image:
            return False, f"{c.name} runs {c.image}, not {image}"
        if not c.running or c.health in {"starting", "unhealthy"}:
            return False, f"{c.name} is {c.state}" + (f", {c.health}" if c.health else "")
    names = ", ".join(c.name for c in containers)
    how = "healthy" if all(c.health == "healthy" for c in containers) else "running"
    return True, f"{names} {how}" + (f" ({image})" if image else "")


def service_gate(
    ctx: Context,
    service: str,
    *,
    timeout: float,
    old_ids: Collection[str] = (),
    image: str | None = None,
) -> Gate:
    """Poll until every container of ``service`` runs and is healthy (when it has a health
    check), is not one of ``old_ids`` and runs ``image`` when given; give up at once when one
    keeps restarting."""
    return poll(
        lambda: _service_once(ctx, service, old_ids, image),
        timeout=timeout,
        crashed=lambda: crashed_reason(ctx, service),
    )


class StepFailed(UserError):
    """A step failed; the message names it and says why (never a secret)."""


@dataclass
class Steps:
    """The steps of one change as they run: each is reported through ``progress`` and recorded
    as a row (OK with its detail, or FAIL with the reason)."""

    progress: Progress
    rows: list[Row] = field(default_factory=list)

    def run(self, name: str, fn: Callable[[], str]) -> None:
        """Run one step; ``fn`` returns a detail. Raise StepFailed when it raises UserError."""
        self.progress(name)
        started = time.monotonic()
        try:
            detail = fn()
        except UserError as err:
            self.rows.append(Row(name, Status.FAIL, short(err.message), time.monotonic() - started))
            raise StepFailed(f"{name} failed: {err.message}") from None
        self.rows.append(Row(name, Status.OK, short(detail), time.monotonic() - started))

    def gate(self, name: str, gate: Callable[[], Gate]) -> None:
        """Run a health gate as a step. Raise StepFailed when it does not pass."""
        self.progress(name)
        outcome = gate()
        self.rows.append(outcome.row(name))
        if not outcome.ok:
            raise StepFailed(f"{name} failed: {outcome.detail}")
