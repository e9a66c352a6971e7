"""Services and logs: ``/hq ps``, ``/hq logs``, ``/hq restart``, ``/hq scale``,
``/hq check logging``.

Plans are pure and carry the exact compose argv; execute first checks the service against the
compose file (``config --services``), so a typo gets the list of valid names, then runs the argv.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from commands.health import short, worst
from commands.infra.compose import SERVICE, ComposeArgv, parse_ps
from commands.infra.gateway import InfraError
from commands.redact import default_redactor
from commands.spec import (
    Arg,
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

TAIL_DEFAULT, TAIL_MAX = 100, 10_000
GREP_MAX = 200
INLINE_LINES, INLINE_CHARS = 40, 3500
RESTART_WAIT = 60.0
GUIDE_LOG_OPTS = {"max-size": "50m", "max-file": "5"}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:h|m|s|ms))+$")
_DATE = re.compile(
    r"^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?([Zz]|[+-]\d{2}:?\d{2})?$"
)


# --- argument parsers (ValueError with a sentence for bad input) ---------------------------------
def parse_service(text: str) -> str:
    """Given a service name as typed, return it in lower case. Raise ValueError when it cannot
    be a compose service name."""
    name = text.strip().lower()
    if not SERVICE.match(name):
        raise ValueError(f"`{text[:40]}` is not a service name (letters, digits, - _ .)")
    return name


parse_tail = whole_number(1, TAIL_MAX, "lines")  # --tail


def parse_since(text: str) -> str:
    """Given --since's value, return it when compose accepts it: a duration (``10m``, ``2h``,
    ``1h30m``) or an RFC 3339 date/time (``2025-01-15T10:00:00``, ``...Z``, ``...+02:00``)."""
    value = text.strip()
    if len(value) <= 20 and _DURATION.match(value):
        return value
    if len(value) <= 40 and _DATE.match(value):
        try:
            datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
        except ValueError:
            raise ValueError(f"`{value}` is not a valid date/time") from None
        return value
    raise ValueError("expected a duration like 10m or 2h, or a time like 2025-01-15T10:00:00")


def parse_grep(text: str) -> str:
    """Given --grep's value, return it: a plain text of 1 to 200 printable characters, matched
    as a case-insensitive substring (no regular expressions, so nothing can run away)."""
    if not text or len(text) > GREP_MAX:
        raise ValueError(f"expected a text of 1 to {GREP_MAX} characters")
    if any(not ch.isprintable() for ch in text):
        raise ValueError("the pattern may not contain control characters")
    return text


def parse_replicas(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number of replicas") from None
    if value < 1:
        raise ValueError("expected at least 1 replica")
    return value


# --- shared helpers -----------------------------------------------------------------------------
def require_service(ctx: Context, service: str) -> list[str]:
    """Given a service name, return the project's services. Raise UserError listing the valid
    names when the compose file does not define it."""
    services: list[str] = ctx.infra.compose.services()
    if service not in services:
        valid = ", ".join(f"`{s}`" for s in services) or "(none)"
        raise UserError(f"`{service}` is not a service of this deployment. Valid names: {valid}.")
    return services


def load_env_secrets(ctx: Context) -> str:
    """Read the deployment's ``.env`` so its secrets are masked in what follows. Return a note
    for the user when it could not be read (masking then relies on patterns only)."""
    try:
        ctx.infra.env.read()
    except UserError:
        return "\n_(the deployment's .env could not be read; only secret-shaped text is masked)_"
    return ""


def state_row(container: Any) -> Row:
    """Given a container (compose ps or engine), return its status row."""
    state = container.state
    health = container.health
    if state != "running" or health == "unhealthy":
        status = Status.FAIL
    elif health == "starting":
        status = Status.WARN
    else:
        status = Status.OK
    detail = state + (f", {health}" if health else "")
    extra = getattr(container, "status", "")
    if extra:
        detail += f" ({extra})"
    return Row(container.name, status, short(detail))


# --- /hq ps -------------------------------------------------------------------------------------
def _ps_plan(args: Mapping[str, Any], ctx: Context) -> Plan:
    argv = ComposeArgv.from_settings(ctx.settings)
    return Plan(
        command="ps",
        summary=f"list the containers of {ctx.settings.hq_compose_project}",
        steps=(
            Step("list the compose services", argv.services()),
            Step("list containers", argv.ps()),
        ),
    )


def _ps_execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
    compose = ctx.infra.compose
    services = compose.services()
    containers = compose.run(plan.steps[1].argv)
    try:
        found = parse_ps(containers.text)
    except ValueError:
        raise InfraError("`docker compose ps` printed something that is not JSON.") from None
    rows = [state_row(c) for c in found]
    for service in services:
        if not any(c.service == service for c in found):
            rows.append(Row(f"{service} (service)", Status.FAIL, "no container"))
    verdict = worst([r.status for r in rows])
    running = sum(1 for c in found if c.running)
    title = f"{running} of {len(found)} containers running in {ctx.settings.hq_compose_project}"
    return Result(ok=verdict != Status.FAIL, title=title, rows=tuple(rows))


# --- /hq logs -----------------------------------------------------------------------------------
def _logs_plan(args: Mapping[str, Any], ctx: Context) -> Plan:
    service = args["service"]
    tail = args.get("tail") or TAIL_DEFAULT
    since = args.get("since")
    grep = args.get("grep")
    argv = ComposeArgv.from_settings(ctx.settings).logs([service], tail=tail, since=since)
    summary = f"show the last {tail} log lines of {service}"
    summary += f" since {since}" if since else ""
    summary += f" containing {grep!r}" if grep else ""
    return Plan(
        command="logs",
        summary=summary,
        steps=(Step(f"read the logs of {service}", argv),),
        targets=(service,),
        data={"service": service, "tail": tail, "since": since, "grep": grep},
    )


def filter_lines(text: str, pattern: str | None) -> list[str]:
    """Given log text and an optional pattern, return the lines containing it (ignoring case)."""
    lines = text.splitlines()
    if not pattern:
        return lines
    needle = pattern.casefold()
    return [line for line in lines if needle in line.casefold()]


def logs_result(service: str, lines: Sequence[str], data: Mapping[str, Any], note: str) -> Result:
    """Given the (redacted) lines, return them inline in a code block when short, else as an
    attachment."""
    grep = data.get("grep")
    what = f"{len(lines)} line{'s' if len(lines) != 1 else ''}"
    title = f"Logs of {service}: {what}"
    if grep:
        title += f" containing {grep!r} (of the last {data['tail']})"
    if not lines:
        return Result(ok=True, title=title, text="No log lines." + note)
    body = "\n".join(lines)
    if len(lines) > INLINE_LINES or len(body) > INLINE_CHARS:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        attachment = Attachment(
            filename=f"{service}-logs-{stamp}.txt",
            content=(body + "\n").encode(),
            title=f"Logs of {service}",
        )
        return Result(
            ok=True,
            title=title,
            text=f"Too long to show here: attached as {attachment.filename}." + note,
            attachments=(attachment,),
        )
    fenced = body.replace("```", "'''")
    return Result(ok=True, title=title, text=f"```\n{fenced}\n```" + note)


def _logs_execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
    service = str(plan.data["service"])
    require_service(ctx, service)
    note = load_env_secrets(ctx)
    output = ctx.infra.compose.run(plan.steps[0].argv)
    redact = default_redactor()
    # compose prints the containers' stdout and stderr on its stdout; its own stderr carries
    # only compose's warnings, which are not log lines
    lines = [redact(line) for line in filter_lines(output.text, plan.data.get("grep"))]
    return logs_result(service, lines, plan.data, note)


# --- /hq restart --------------------------------------------------------------------------------
def _restart_plan(args: Mapping[str, Any], ctx: Context) -> Plan:
    service = args["service"]
    argv = ComposeArgv.from_settings(ctx.settings).restart([service])
    return Plan(
        command="restart",
        summary=f"restart {service}",
        steps=(
            Step(f"restart {service}", argv),
            Step(f"wait until {service} runs (and is healthy)"),
        ),
        targets=(service,),
        data={"service": service},
    )


def wait_running(ctx: Context, service: str, limit: float, progress: Progress) -> list[Row]:
    """Poll the service's containers until all run and none is starting or ``limit`` seconds
    pass; return their rows."""
    deadline = time.monotonic() + limit
    told = False
    while True:
        containers = ctx.infra.docker.containers(service)
        rows = [state_row(c) for c in containers]
        settled = containers and all(r.status == Status.OK for r in rows)
        if settled or time.monotonic() >= deadline:
            return rows
        if not told:
            progress(f"waiting for {service} to become healthy")
            told = True
        time.sleep(1.0)


def _restart_execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
    service = str(plan.data["service"])
    require_service(ctx, service)
    progress(f"restarting {service}")
    started = time.monotonic()
    ctx.infra.compose.run(plan.steps[0].argv)
    rows = wait_running(ctx, service, RESTART_WAIT, progress)
    verdict = worst([r.status for r in rows]) if rows else Status.FAIL
    took = time.monotonic() - started
    text = (
        "`restart` keeps the container and does not re-read `.env`: a changed secret needs the "
        "service recreated (`up -d --no-deps --force-recreate`)."
    )
    if verdict == Status.OK:
        title = f"Restarted {service} ({took:.0f} s)"
    else:
        title = f"Restarted {service}, but it is not healthy after {took:.0f} s"
    return Result(ok=verdict != Status.FAIL, title=title, text=text, rows=tuple(rows))


# --- /hq scale ----------------------------------------------------------------------------------
def _scale_plan(args: Mapping[str, Any], ctx: Context) -> Plan:
    settings = ctx.settings
    service, replicas = args["service"], args["replicas"]
    backend = settings.hq_service_backend
    if service != backend:
        raise UserError(
            f"Only the backend (`{backend}`) can be scaled; `{service}` runs as a single "
            "instance (the guide scales the Socket.IO backend behind nginx)."
        )
    if not 1 <= replicas <= settings.hq_scale_max:
        raise UserError(
            f"Replicas must be from 1 to {settings.hq_scale_max} (HQ_SCALE_MAX); got {replicas}."
        )
    argv = ComposeArgv.from_settings(settings).up(
        [service], no_deps=True, no_recreate=True, scale={service: replicas}
    )
    steps = [Step(f"scale {service} to {replicas}", argv)]
    if settings.hq_nginx_conf:
        steps.insert(0, Step(f"check {settings.hq_nginx_conf} for ip_hash (sticky sessions)"))
    return Plan(
        command="scale",
        summary=f"scale {service} to {replicas} replica{'s' if replicas != 1 else ''}",
        steps=tuple(steps),
        targets=(service,),
        data={"service": service, "replicas": replicas},
    )


def upstream_blocks(conf: str) -> dict[str, str]:
    """Given nginx config text, return upstream name -> block body (comments removed)."""
    text = re.sub(r"#[^\n]*", "", conf)
    return {m.group(1): m.group(2) for m in re.finditer(r"\bupstream\s+(\S+)\s*\{([^}]*)\}", text)}


def nginx_row(path: Path | None, backend: str, replicas: int) -> Row:
    """Given the nginx config path (or None), return whether the backend's upstream uses
    ``ip_hash`` (Socket.IO needs sticky sessions across replicas)."""
    name = "nginx sticky sessions"
    if path is None:
        return Row(name, Status.UNKNOWN, "not checked: HQ_NGINX_CONF is not set")
    try:
        conf = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return Row(name, Status.WARN, f"cannot read {path}: {exc.strerror or type(exc).__name__}")
    blocks = upstream_blocks(conf)
    if not blocks:
        return Row(name, Status.WARN, f"{path} has no upstream block: add one with `ip_hash;`")
    mine = {n: b for n, b in blocks.items() if n == backend or backend in b} or blocks
    missing = [n for n, body in mine.items() if not re.search(r"(^|[\s;])ip_hash\s*;", body)]
    if not missing:
        return Row(name, Status.OK, f"upstream {', '.join(mine)} uses ip_hash")
    status = Status.WARN
    detail = (
        f"upstream {', '.join(missing)} has no `ip_hash;`: Socket.IO clients will bounce "
        "between replicas. Add `ip_hash;` to the upstream block and reload nginx."
    )
    if replicas == 1:
        detail += " (harmless with one replica)"
    return Row(name, status, detail)


def _scale_execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
    service, replicas = str(plan.data["service"]), int(plan.data["replicas"])
    require_service(ctx, service)
    conf = ctx.settings.hq_nginx_conf
    nginx = nginx_row(Path(conf) if conf else None, service, replicas)
    progress(f"scaling {service} to {replicas}")
    started = time.monotonic()
    ctx.infra.compose.run(plan.steps[-1].argv)
    rows = wait_running(ctx, service, RESTART_WAIT, progress)
    running = sum(1 for r in rows if r.status == Status.OK)
    took = time.monotonic() - started
    ok = running == replicas and len(rows) == replicas
    title = f"{service} scaled to {replicas} ({running} running and healthy, {took:.0f} s)"
    if not ok:
        title = f"{service} asked for {replicas} replicas: {running} of {len(rows)} are healthy"
    return Result(ok=ok, title=title, rows=(nginx, *rows))


# --- /hq check logging --------------------------------------------------------------------------
def read_daemon_json(path: Path) -> tuple[dict[str, Any], str]:
    """Given daemon.json's path, return (its settings, a note). A missing file is {} ("does not
    exist"). Raise UserError when it is not readable or not a JSON object."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, f"{path} does not exist (the daemon uses its defaults)"
    except OSError as exc:
        raise UserError(f"Cannot read {path}: {exc.strerror or type(exc).__name__}.") from None
    try:
        config = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON (line {getattr(exc, 'lineno', '?')}).") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object.")
    return config, f"read {path}"


def logging_report(
    config: Mapping[str, Any], driver: str, containers: Sequence[tuple[str, Mapping[str, Any]]]
) -> tuple[list[Row], dict[str, Any] | None]:
    """Given daemon.json's settings, the daemon's LoggingDriver (``docker info``) and each
    project container's LogConfig, return the rows and the daemon.json to write (None when
    nothing is missing)."""
    rows: list[Row] = []
    configured = str(config.get("log-driver", "") or "")
    raw_opts = config.get("log-opts")
    opts: dict[str, Any] = dict(raw_opts) if isinstance(raw_opts, dict) else {}
    effective = driver or configured or "json-file"
    if effective == "json-file":
        rows.append(Row("log driver", Status.OK, f"json-file (docker info: {driver or '?'})"))
    elif effective == "local":
        rows.append(
            Row(
                "log driver", Status.WARN, "local (it rotates on its own; the guide uses json-file)"
            )
        )
    else:
        rows.append(Row("log driver", Status.WARN, f"{effective}; the guide uses json-file"))
    for key in ("max-size", "max-file"):
        if opts.get(key):
            rows.append(Row(f"log-opts {key}", Status.OK, f"{opts[key]} in daemon.json"))
        else:
            rows.append(
                Row(
                    f"log-opts {key}",
                    Status.FAIL,
                    f"missing: logs grow without end (the guide sets {GUIDE_LOG_OPTS[key]})",
                )
            )
    for name, log_config in containers:
        kind = str(log_config.get("Type", ""))
        copts = log_config.get("Config") or {}
        missing = [k for k in ("max-size", "max-file") if not copts.get(k)]
        if kind == "json-file" and missing:
            rows.append(
                Row(
                    f"container {name}",
                    Status.WARN,
                    f"json-file without {', '.join(missing)}: recreate it after fixing the "
                    "daemon (`up -d --force-recreate`)",
                )
            )
        else:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(copts.items())) or "no options"
            rows.append(Row(f"container {name}", Status.OK, f"{kind} ({shown})"))
    needs = effective != "json-file" or any(not opts.get(k) for k in GUIDE_LOG_OPTS)
    if not needs:
        return rows, None
    wanted = dict(config)
    wanted["log-driver"] = "json-file"
    merged = dict(opts)
    for key, value in GUIDE_LOG_OPTS.items():
        if not merged.get(key):
            merged[key] = value
    wanted["log-opts"] = merged
    return rows, wanted


def _logging_plan(args: Mapping[str, Any], ctx: Context) -> Plan:
    path = ctx.settings.hq_docker_daemon_json
    return Plan(
        command="check logging",
        summary="check that Docker rotates container logs (json-file with max-size, max-file)",
        steps=(
            Step(f"read {path}"),
            Step("read the daemon's logging driver (docker info)"),
            Step("read each project container's log settings"),
        ),
        data={"path": str(path)},
    )


def _logging_execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
    path = Path(str(plan.data["path"]))
    config, note = read_daemon_json(path)
    docker = ctx.infra.docker
    driver = str(docker.info().get("LoggingDriver", ""))
    containers = []
    for info in docker.containers():
        host = docker.inspect(info.id).get("HostConfig") or {}
        containers.append((info.name, host.get("LogConfig") or {}))
    rows, wanted = logging_report(config, driver, containers)
    verdict = worst([r.status for r in rows])
    if wanted is None:
        text = f"Log rotation is set as the guide says ({note})."
        if verdict != Status.OK:
            text += " Some containers still use older settings; recreate them."
        return Result(
            ok=True, title="Docker log rotation is configured", text=text, rows=tuple(rows)
        )
    body = json.dumps(wanted, indent=2, sort_keys=False)
    text = (
        f"{note}. Write this to `{path}` (your other settings are kept):\n```\n{body}\n```\n"
        "Then restart Docker (`service docker restart`) and recreate the containers "
        "(`docker compose up -d --force-recreate`): existing containers keep the log settings "
        "they were created with."
    )
    return Result(
        ok=False,
        title="Docker log rotation is not configured as the guide says",
        text=text,
        rows=tuple(rows),
    )


SERVICE_ARG = Arg("service", parse=parse_service, help="a service of the compose file")

SPECS = (
    CommandSpec(
        name="ps",
        summary="List the deployment's containers with their state and health.",
        plan=_ps_plan,
        execute=_ps_execute,
        section="Health",
    ),
    CommandSpec(
        name="logs",
        summary="Show a service's recent log lines (long output is attached as a file).",
        args=(SERVICE_ARG,),
        options=(
            Option(
                "--tail",
                parse=parse_tail,
                default=TAIL_DEFAULT,
                metavar="N",
                help=f"lines to read, 1 to {TAIL_MAX} (default {TAIL_DEFAULT})",
            ),
            Option(
                "--since",
                parse=parse_since,
                metavar="T",
                help="a duration like 10m or 2h, or a time like 2025-01-15T10:00:00",
            ),
            Option(
                "--grep",
                parse=parse_grep,
                metavar="PATTERN",
                help="keep only lines containing this text (any case), within the tail",
            ),
        ),
        plan=_logs_plan,
        execute=_logs_execute,
        section="Logs",
    ),
    CommandSpec(
        name="check logging",
        summary="Check that Docker rotates container logs as the guide says.",
        plan=_logging_plan,
        execute=_logging_execute,
        section="Logs",
    ),
    CommandSpec(
        name="restart",
        summary="Restart a service's containers (does not re-read .env).",
        args=(SERVICE_ARG,),
        plan=_restart_plan,
        execute=_restart_execute,
        section="Services",
    ),
    CommandSpec(
        name="scale",
        summary="Run N replicas of the backend (checks nginx for sticky sessions).",
        args=(
            Arg("service", parse=parse_service, metavar="backend", help="only the backend scales"),
            Arg(
                "replicas",
                parse=parse_replicas,
                metavar="N",
                help="number of replicas, 1 to HQ_SCALE_MAX",
            ),
        ),
        plan=_scale_plan,
        execute=_scale_execute,
        section="Services",
    ),
)
