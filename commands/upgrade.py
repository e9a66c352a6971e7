"""Service upgrades and rolling back (guide: Service Upgrades, Rolling Back):
``/hq upgrade app [--ref REF]``, ``/hq upgrade infra SERVICE TAG``, ``/hq rollback SHA
[--restore BACKUP]``. Each needs a second person.

Plans are bound to commits, never to a moving ref: ``upgrade app`` fetches (the only side effect
of its plan: remote-tracking refs and objects; the checkout is untouched), resolves the ref to a
SHA and shows the commits between; the approval then covers exactly that SHA, and if the remote
moves before the approval, the re-made plan differs and nothing runs. ``upgrade infra`` edits one
line of the compose file (the service's ``image:``) and is bound to the file's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from commands import deploy
from commands.deploy import StepFailed
from commands.health import short
from commands.infra import gateway
from commands.infra.envfile import atomic_replace
from commands.infra.gateway import CommandFailed, CommandTimeout
from commands.infra.git import Git, parse_ref, parse_sha
from commands.ops import parse_service, require_service
from commands.parser import parse
from commands.spec import (
    Arg,
    CommandSpec,
    Context,
    Option,
    Plan,
    Progress,
    Result,
    Role,
    Step,
    UserError,
)

log = logging.getLogger(__name__)

LOG_LIMIT = 30
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")
BACKUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
BACKUP_COMMAND, RESTORE_COMMAND = "backup now", "restore"


def parse_tag(text: str) -> str:
    """Given an image tag as typed, return it. Raise ValueError unless it follows the docker tag
    grammar (letters, digits, ``_ . -``, at most 128, not starting with ``.`` or ``-``)."""
    tag = text.strip()
    if not TAG.match(tag):
        raise ValueError("expected an image tag: letters, digits, _ . - (at most 128)")
    return tag


def parse_backup(text: str) -> str:
    """Given a backup id (or ``latest``) as typed, return it. Raise ValueError when malformed."""
    name = text.strip()
    if not BACKUP_ID.match(name):
        raise ValueError("expected a backup id (letters, digits, . _ : -) or `latest`")
    return name


def with_tag(image: str, tag: str) -> str:
    """Given an image reference and a tag, return the reference with that tag (a digest is
    dropped): ``postgres:15`` + ``16.2`` -> ``postgres:16.2``."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    repo = name[:colon] if colon > slash else name
    return f"{repo}:{tag}"


def _compose(ctx: Context, argv: Any, done: str, timeout: float | None = None) -> Callable[[], str]:
    """Return a step that runs a planned compose argv and says ``done``."""

    def run() -> str:
        ctx.infra.compose.run(tuple(argv), timeout=timeout)
        return done

    return run


def _backend_version(ctx: Context) -> str:
    """Return the backend's /health ``version`` now, or ``?``."""
    try:
        body = ctx.infra.http.get(ctx.settings.hq_backend_url + "/health").json()
    except UserError:
        return "?"
    version = body.get("version") if isinstance(body, dict) else None
    return str(version) if version else "?"


def _jwt(ctx: Context) -> str | None:
    try:
        jwt = ctx.infra.env.read().get("JWT_SECRET")
    except UserError:
        return None
    return str(jwt) if jwt else None


# --- upgrade app ----------------------------------------------------------------------------------
def commit_lines(git: Any, since: str, until: str) -> tuple[int, list[str]]:
    """Given two commits, return how many commits ``since..until`` holds and the plan's lines
    for them: the newest LOG_LIMIT, and how many older ones were left out."""
    commits = git.log(since, until, limit=LOG_LIMIT)
    total = git.count(since, until)
    lines = [f"• {c.line}" for c in commits]
    if total > len(commits):
        lines.append(f"• ... and {total - len(commits)} older")
    return total, lines


def resolve_target(git: Git, remote: str, ref: str) -> tuple[str, str]:
    """Given a ref as typed, return (full SHA, how it was found): a branch of ``remote``, a tag,
    or a commit SHA. Raise UserError when it names none."""
    candidates = [(f"refs/remotes/{remote}/{ref}", f"{remote}/{ref}"), (f"refs/tags/{ref}", ref)]
    if re.fullmatch(r"[0-9a-fA-F]{7,40}", ref):
        candidates.append((ref, ref))
    for rev, label in candidates:
        sha = git.resolve(rev)
        if sha:
            return sha, label
    raise UserError(
        f"`{ref}` is not a branch of {remote}, a tag or a commit known to the checkout "
        "(after fetching)."
    )


def _psql_argv(ctx: Context) -> tuple[str, ...]:
    env = ctx.infra.env.read()
    user, database = env.get("DB_USER"), env.get("DB_NAME")
    if not user or not database:
        raise UserError("The deployment's .env does not set DB_USER and DB_NAME.")
    base = deploy.compose_argv(ctx).base
    postgres = ctx.settings.hq_service_postgres
    return (*base, "exec", "-T", postgres, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-U", user, "-d", database)  # fmt: skip


def plan_app(args: Mapping[str, Any], ctx: Context) -> Plan:
    """Given ``--ref`` (default HQ_GIT_BRANCH), fetch HQ_GIT_REMOTE and return the plan that
    fast-forwards the checkout to the ref's commit, rebuilds and restarts the backend, runs the
    migrations file and health-gates. Raise UserError when the ref is unknown, already deployed
    or not ahead of the deployed commit."""
    settings = ctx.settings
    folder = deploy.deploy_dir(settings)
    git = Git(folder)
    git.check()
    remote = str(settings.hq_git_remote)
    notes: list[str] = []
    fetch_timeout = float(settings.hq_git_fetch_timeout)
    try:
        git.fetch(remote, timeout=fetch_timeout)
    except CommandTimeout:
        notes.append(
            f"_`git fetch {remote}` took longer than {fetch_timeout:g} s: this shows {remote} as "
            "last fetched._"
        )
    except CommandFailed as exc:
        notes.append(
            f"_`git fetch {remote}` failed ({short(exc.stderr_tail, 200)}): this shows "
            f"{remote} as last fetched._"
        )
    ref = str(args.get("ref") or settings.hq_git_branch)
    target, label = resolve_target(git, remote, ref)
    head = git.head()
    if target == head:
        raise UserError(f"The deployment is already at {label} ({head[:12]}): nothing to upgrade.")
    if not git.is_ancestor(head, target):
        raise UserError(
            f"{label} ({target[:12]}) is not ahead of the deployed commit {head[:12]}: "
            "`upgrade app` only moves forward. To go back, use `/hq rollback SHA`."
        )
    total, shown = commit_lines(git, head, target)
    compose = deploy.compose_argv(ctx)
    backend = settings.hq_service_backend
    migrations = str(settings.hq_migrations_file)
    migrate = _psql_argv(ctx) if git.has_path(target, migrations) else None
    merge = git.argv("merge", "--ff-only", "--quiet", target)
    build = (*compose.base, "build", backend)
    up = compose.up([backend], no_deps=True)
    gate = float(settings.hq_gate_timeout)
    steps = [
        Step(f"fast-forward the checkout {folder} to {target[:12]}", merge),
        Step(f"build the {backend} image", build),
        Step(f"start {backend} from the new image", up),
        Step(
            f"run {migrations} through psql in the {settings.hq_service_postgres} container "
            "(stdin from the file)",
            migrate or (),
        )
        if migrate
        else Step(f"no {migrations} at {target[:12]}: no migrations to run"),
        Step(f"health gate: GET {settings.hq_backend_url}/health answers ok (up to {gate:g} s)"),
        Step(
            f"if the build fails, the checkout goes back to {head[:12]}; a later failure is "
            f"reported with the way back: `/hq rollback {head[:12]}`"
        ),
    ]
    summary = (
        f"Upgrade the app from {head[:12]} to {label} = {target[:12]} "
        f"({total} commit{'s' if total != 1 else ''}):\n" + "\n".join(shown)
    )
    return Plan(
        command="upgrade app",
        summary=summary,
        steps=tuple(steps),
        targets=(f"git:{folder}", f"service:{backend}"),
        data={
            "dir": str(folder),
            "from": head,
            "to": target,
            "ref": label,
            "merge": list(merge),
            "build": list(build),
            "up": list(up),
            "migrate": list(migrate) if migrate else None,
            "migrations": migrations,
            "gate_timeout": gate,
        },
        notes=tuple(notes),
    )


def _go_back(git: Git, commit: str, branch: str | None) -> None:
    """Put the checkout back at ``commit`` (the branch too, when one is checked out)."""
    if branch:
        git.run("reset", "--quiet", "--keep", commit)
    else:
        git.run("checkout", "--quiet", "--detach", commit)


def _migrate(ctx: Context, folder: Path, plan: Plan) -> str:
    path = folder / str(plan.data["migrations"])
    try:
        sql = path.read_bytes()
    except OSError as exc:
        raise UserError(f"Cannot read {path}: {exc.strerror or type(exc).__name__}.") from None
    compose = deploy.compose_argv(ctx)
    gateway.run(
        tuple(plan.data["migrate"]),
        input=sql,
        timeout=float(ctx.settings.hq_build_timeout),
        cwd=compose.file.parent,
    )
    return f"{plan.data['migrations']} ran ({len(sql)} bytes)"


def execute_app(plan: Plan, ctx: Context, progress: Progress) -> Result:
    data = plan.data
    folder = Path(str(data["dir"]))
    git = Git(folder)
    old, new = str(data["from"]), str(data["to"])
    steps = deploy.Steps(progress)
    with deploy.exclusive(ctx, plan.command):
        deploy.guard_compose_env(ctx.infra.env.read())
        if git.head() != old:
            raise UserError("The checkout moved since the plan was made; nothing was done.")
        branch = git.branch()
        before = _backend_version(ctx)
        stage = "checkout"
        try:

            def merge() -> str:
                git.run_argv(tuple(data["merge"]))
                if git.head() != new:
                    raise UserError(f"HEAD is not {new[:12]} after the merge")
                return f"HEAD is {new[:12]}" + (f" (branch {branch})" if branch else "")

            steps.run("fast-forward the checkout", merge)
            stage = "build"
            timeout = float(ctx.settings.hq_build_timeout)
            build = _compose(ctx, data["build"], "built", timeout)
            steps.run("build the backend image", build)
            stage = "start"
            up = _compose(ctx, data["up"], "started")
            steps.run("start the new backend", up)
            if data.get("migrate"):
                steps.run("run the migrations", lambda: _migrate(ctx, folder, plan))
            steps.gate(
                "backend healthy",
                lambda: deploy.backend_gate(
                    ctx, jwt=_jwt(ctx), timeout=float(data["gate_timeout"])
                ),
            )
        except StepFailed as failed:
            return _app_failed(git, plan, steps, stage, branch, failed.message)
        after = _backend_version(ctx)
    return Result(
        ok=True,
        title=f"Upgraded the app to {data['ref']} ({new[:12]}): backend healthy, version "
        f"{before} -> {after}.",
        rows=tuple(steps.rows),
        data={"from": old, "to": new, "version_before": before, "version_after": after},
    )


def _app_failed(
    git: Git,
    plan: Plan,
    steps: deploy.Steps,
    stage: str,
    branch: str | None,
    reason: str,
) -> Result:
    old, new = str(plan.data["from"]), str(plan.data["to"])
    if stage == "checkout":
        title = f"Upgrade to {new[:12]} failed before anything changed: {short(reason, 300)}"
    elif stage == "build":

        def go_back() -> str:
            _go_back(git, old, branch)
            return f"HEAD is {old[:12]} again"

        try:
            steps.run(f"put the checkout back at {old[:12]}", go_back)
            title = (
                f"Upgrade to {new[:12]} failed while building ({short(reason, 300)}). The "
                f"checkout is back at {old[:12]}; the running backend was not touched."
            )
        except StepFailed:
            title = (
                f"Upgrade to {new[:12]} failed while building ({short(reason, 300)}), and the "
                f"checkout could not be put back at {old[:12]}: see below."
            )
    else:
        title = (
            f"Upgrade to {new[:12]} failed: {short(reason, 300)}. The checkout is at "
            f"{new[:12]}. To go back: `/hq rollback {old[:12]}` (add `--restore BACKUP` if the "
            "migrations changed the schema)."
        )
    return Result(ok=False, title=title, rows=tuple(steps.rows), data={"failed_at": stage})


# --- rollback -------------------------------------------------------------------------------------
def _sub_plan(ctx: Context, text: str) -> tuple[CommandSpec, Mapping[str, Any], Plan]:
    """Given the text of another command (``restore ID``), return its spec, typed arguments and
    plan, as the registry would make them."""
    parsed = parse(text, ctx.registry)
    return parsed.spec, parsed.args, parsed.spec.plan(parsed.args, ctx)


def plan_rollback(args: Mapping[str, Any], ctx: Context) -> Plan:
    """Given a commit SHA (and optionally a backup to restore), return the plan that checks the
    commit out, rebuilds and restarts the backend, restores the backup, and health-gates. Raise
    UserError when the commit is unknown, is HEAD or is not an ancestor of HEAD."""
    settings = ctx.settings
    folder = deploy.deploy_dir(settings)
    git = Git(folder)
    git.check()
    sha = str(args["sha"])
    target = git.resolve(sha)
    if target is None:
        raise UserError(
            f"`{sha}` is not a commit of {folder} (`git cat-file -e {sha}^{{commit}}` fails), or "
            "the short SHA is ambiguous: give more digits."
        )
    head = git.head()
    if target == head:
        raise UserError(f"The deployment is already at {target[:12]}: nothing to roll back.")
    if not git.is_ancestor(target, head):
        raise UserError(
            f"{target[:12]} is not an earlier commit of the deployed {head[:12]}: `rollback` only "
            "goes back. To go forward, use `/hq upgrade app --ref REF`."
        )
    total, undone = commit_lines(git, target, head)
    compose = deploy.compose_argv(ctx)
    backend = settings.hq_service_backend
    checkout = git.argv("checkout", "--quiet", "--detach", target)
    up = compose.up([backend], no_deps=True, build=True)
    gate = float(settings.hq_gate_timeout)
    steps = [
        Step(f"check out {target[:12]} in {folder} (detached HEAD)", checkout),
        Step(f"rebuild and restart {backend} from it", up),
    ]
    restore: dict[str, Any] | None = None
    notes: list[str] = []
    if args.get("restore"):
        # The restore is `/hq restore ID` (commands/backups.py), run through the registry; its
        # plan's digest is bound into this plan. Without it, a rollback with --restore is
        # refused, not half done.
        if RESTORE_COMMAND not in ctx.registry:
            raise UserError(
                "`--restore` needs the `restore` command, which this hq-bot does not have; "
                "nothing was planned. Roll back without it, then restore the backup by hand."
            )
        text = f"{RESTORE_COMMAND} {shlex.quote(str(args['restore']))}"
        _spec, _args, sub = _sub_plan(ctx, text)
        restore = {"text": text, "digest": sub.digest()}
        notes.extend(sub.notes)
        steps.append(Step(f"restore: {sub.summary}"))
        steps.extend(Step(f"restore: {s.title}", s.argv) for s in sub.steps)
    steps.append(
        Step(f"health gate: GET {settings.hq_backend_url}/health answers ok (up to {gate:g} s)")
    )
    summary = (
        f"Roll the app back from {head[:12]} to {target[:12]}, undoing {total} "
        f"commit{'s' if total != 1 else ''}:\n" + "\n".join(undone)
    )
    return Plan(
        command="rollback",
        summary=summary,
        steps=tuple(steps),
        targets=(f"git:{folder}", f"service:{backend}"),
        data={
            "dir": str(folder),
            "from": head,
            "to": target,
            "checkout": list(checkout),
            "up": list(up),
            "restore": restore,
            "gate_timeout": gate,
        },
        notes=tuple(notes),
    )


def execute_rollback(plan: Plan, ctx: Context, progress: Progress) -> Result:
    data = plan.data
    git = Git(Path(str(data["dir"])))
    old, new = str(data["from"]), str(data["to"])
    steps = deploy.Steps(progress)
    with deploy.exclusive(ctx, plan.command):
        deploy.guard_compose_env(ctx.infra.env.read())
        if git.head() != old:
            raise UserError("The checkout moved since the plan was made; nothing was done.")
        before = _backend_version(ctx)
        try:

            def checkout() -> str:
                git.run_argv(tuple(data["checkout"]))
                if git.head() != new:
                    raise UserError(f"HEAD is not {new[:12]} after the checkout")
                return f"HEAD is {new[:12]}"

            steps.run(f"check out {new[:12]}", checkout)
            timeout = float(ctx.settings.hq_build_timeout)
            up = _compose(ctx, data["up"], "rebuilt and started", timeout)
            steps.run("rebuild and restart the backend", up)
            if data.get("restore"):
                steps.run("restore the backup", lambda: _restore(ctx, data, progress))
            steps.gate(
                "backend healthy",
                lambda: deploy.backend_gate(
                    ctx, jwt=_jwt(ctx), timeout=float(data["gate_timeout"])
                ),
            )
        except StepFailed as failed:
            return Result(
                ok=False,
                title=f"Rollback to {new[:12]} failed: {short(failed.message, 300)}. The checkout "
                f"is at {git.head()[:12]}; the previous commit was {old[:12]}.",
                rows=tuple(steps.rows),
            )
        after = _backend_version(ctx)
    return Result(
        ok=True,
        title=f"Rolled the app back to {new[:12]}: backend healthy, version {before} -> {after}.",
        rows=tuple(steps.rows),
        data={"from": old, "to": new, "version_before": before, "version_after": after},
    )


def _restore(ctx: Context, data: Mapping[str, Any], progress: Progress) -> str:
    restore = data["restore"]
    spec, _args, sub = _sub_plan(ctx, str(restore["text"]))
    if sub.digest() != restore["digest"]:
        raise UserError("the restore's plan changed since the rollback was approved")
    result = spec.execute(sub, ctx, progress)
    if not result.ok:
        raise UserError(result.title)
    return result.title


# --- upgrade infra --------------------------------------------------------------------------------
_SERVICES_KEY = re.compile(r"^services:\s*(#.*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def set_service_image(text: str, service: str, image: str) -> tuple[str, str]:
    """Given a compose file's text, a service and an image reference, return (the text with
    that service's ``image:`` line set to it, ``"replaced"`` or ``"added"``). Only that one line
    changes (or one line is added after the service's merge keys); comments, order and every
    other byte stay. Raise UserError when the service block cannot be found or its image is not
    a plain value (a variable, flow style)."""
    if not IMAGE.match(image):
        raise UserError(f"`{image}` is not an image reference this command writes.")
    lines = text.splitlines(keepends=True)
    top = next((i for i, ln in enumerate(lines) if _SERVICES_KEY.match(ln.rstrip("\r\n"))), None)
    if top is None:
        raise UserError("The compose file has no top-level `services:`.")
    start: int | None = None
    end = len(lines)
    service_indent: int | None = None
    pattern = re.compile(rf"^\s*([\"']?){re.escape(service)}\1:\s*(#.*)?$")
    for i in range(top + 1, len(lines)):
        line = lines[i].rstrip("\r\n")
        if not _is_content(line):
            continue
        indent = _indent(line)
        if service_indent is None:
            service_indent = indent
        if indent == 0 or (start is not None and indent <= service_indent):
            end = i
            break
        if indent == service_indent and pattern.match(line):
            start = i
    if start is None:
        raise UserError(f"`{service}` is not a block of the compose file's `services:`.")
    body = [i for i in range(start + 1, end) if _is_content(lines[i])]
    if not body:
        raise UserError(f"The `{service}` block of the compose file is empty or in flow style.")
    child = _indent(lines[body[0]])
    image_line = re.compile(r"^(\s*image:\s*)([\"']?)([^\"'\s#]*)\2(\s*(?:#.*)?)$")
    for i in body:
        line = lines[i].rstrip("\r\n")
        if _indent(line) != child or not line.lstrip().startswith("image:"):
            continue
        match = image_line.match(line)
        if match is None or "$" in match.group(3) or not match.group(3):
            raise UserError(
                f"The image of `{service}` is not a plain value in the compose file (a variable "
                "or a quoted expression): change it where it is set."
            )
        eol = lines[i][len(line) :]
        lines[i] = f"{match.group(1)}{match.group(2)}{image}{match.group(2)}{match.group(4)}{eol}"
        return "".join(lines), "replaced"
    after = start
    for i in body:
        if _indent(lines[i]) == child and lines[i].lstrip().startswith("<<:"):
            after = i
        else:
            break
    eol = "\r\n" if lines[after].endswith("\r\n") else "\n"
    lines.insert(after + 1, f"{' ' * child}image: {image}{eol}")
    return "".join(lines), "added"


def _effective_image(ctx: Context, service: str) -> str:
    """Return the image compose uses for ``service`` (``config --no-interpolate``: no value from
    .env is ever read here). Raise UserError when it is not a plain reference."""
    argv = (*deploy.compose_argv(ctx).base, "config", "--no-interpolate", "--format", "json")
    out = ctx.infra.compose.run(argv, timeout=60).text
    try:
        image = json.loads(out)["services"][service].get("image", "")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"`docker compose config` did not show the service {service}.") from None
    if not image or "$" in image or not IMAGE.match(str(image)):
        raise UserError(
            f"`{service}` has no plain `image:` in the compose file (built, or set through a "
            "variable); this command changes image tags only."
        )
    return str(image)


CHECKS = {
    "postgres": "SELECT version()",
    "redis": "PING",
    "minio": "GET /minio/health/live",
}


def _service_kind(settings: Any, service: str) -> str:
    kinds = {
        settings.hq_service_postgres: "postgres",
        settings.hq_service_redis: "redis",
        settings.hq_service_minio: "minio",
        settings.hq_service_coturn: "coturn",
    }
    return kinds.get(service, "")


def plan_infra(args: Mapping[str, Any], ctx: Context) -> Plan:
    """Given a service and a tag, return the plan: (a backup first for PostgreSQL), the
    service's ``image:`` line changed to the tag, pull, ``up -d --no-deps``, checks; on failure
    the old line back and ``up`` again. Raise UserError when the service is not one of the
    compose file's, is the backend (built from source), or already runs that tag."""
    settings = ctx.settings
    service, tag = str(args["service"]), str(args["tag"])
    if service == settings.hq_service_backend:
        raise UserError(
            f"`{service}` is built from the app checkout: use `/hq upgrade app` to change it."
        )
    require_service(ctx, service)
    compose = deploy.compose_argv(ctx)
    path = compose.file
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise UserError(f"Cannot read {path}: {exc.strerror or type(exc).__name__}.") from None
    current = _effective_image(ctx, service)
    image = with_tag(current, tag)
    if image == current:
        raise UserError(f"`{service}` already runs {current}: nothing to upgrade.")
    _text, how = set_service_image(content.decode("utf-8"), service, image)
    kind = _service_kind(settings, service)
    gate = float(settings.hq_gate_timeout)
    pull = (*compose.base, "pull", service)
    up = compose.up([service], no_deps=True)
    steps: list[Step] = []
    notes: list[str] = []
    backup = kind == "postgres"
    if backup:
        # The backup is `/hq backup now` (commands/backups.py), run through the registry; a
        # registry without it (a trimmed build, a test) cannot upgrade PostgreSQL.
        if BACKUP_COMMAND not in ctx.registry:
            raise UserError(
                f"Upgrading `{service}` takes a full database backup first, and this hq-bot "
                "has no `backup now` command; nothing was planned."
            )
        _spec, _args, sub = _sub_plan(ctx, BACKUP_COMMAND)
        steps.append(Step(f"take a full database backup first: {sub.summary}"))
        notes.extend(sub.notes)
    verb = "change" if how == "replaced" else "add"
    steps += [
        Step(
            f"{verb} the `image:` line of {service} in {path}: {current} -> {image} (only that "
            "line; atomic write)"
        ),
        Step(f"pull {image} (skipped when the service has `pull_policy: never`)", pull),
        Step(f"recreate {service} from {image}", up),
        Step(
            f"check: {service}'s new container runs {image} and is healthy"
            + (f", and {CHECKS[kind]} answers" if kind in CHECKS else "")
            + f" (up to {gate:g} s)"
        ),
        Step(f"if a step fails: the old line ({current}) back, recreate {service} and check"),
    ]
    return Plan(
        command="upgrade infra",
        summary=f"Upgrade {service} from {current} to {image}.",
        steps=tuple(steps),
        targets=(f"service:{service}", f"file:{path}"),
        data={
            "service": service,
            "kind": kind,
            "from": current,
            "to": image,
            "file": str(path),
            "file_sha256": hashlib.sha256(content).hexdigest(),
            "pull": list(pull),
            "up": list(up),
            "backup": backup,
            "gate_timeout": gate,
        },
        notes=tuple(notes),
    )


def _service_check(ctx: Context, kind: str) -> Callable[[], tuple[bool, str]]:
    """Return the check that proves the service answers: SELECT version() for PostgreSQL, PING
    for Redis, MinIO's liveness; nothing more for others."""

    def postgres() -> tuple[bool, str]:
        with ctx.infra.postgres.connect() as conn:
            row = conn.execute("SELECT version()").fetchone()
        return True, str(row[0]).split(",")[0] if row else "?"

    def redis() -> tuple[bool, str]:
        return bool(ctx.infra.redis.ping()), "PONG"

    def minio() -> tuple[bool, str]:
        ok, how = ctx.infra.s3.live(ctx.infra.http)
        return bool(ok), str(how)

    checks: dict[str, Callable[[], tuple[bool, str]]] = {
        "postgres": postgres,
        "redis": redis,
        "minio": minio,
    }
    return checks.get(kind, lambda: (True, "no check beyond the container's own"))


def _verify_service(
    ctx: Context, data: Mapping[str, Any], image: str, old_ids: set[str], steps: deploy.Steps
) -> None:
    service, timeout = str(data["service"]), float(data["gate_timeout"])
    steps.gate(
        f"{service} runs {image} and is healthy",
        lambda: deploy.service_gate(ctx, service, timeout=timeout, old_ids=old_ids, image=image),
    )
    kind = str(data["kind"])
    if kind in CHECKS:
        steps.gate(
            f"{service}: {CHECKS[kind]}",
            lambda: deploy.poll(_service_check(ctx, kind), timeout=timeout),
        )


def execute_infra(plan: Plan, ctx: Context, progress: Progress) -> Result:
    data = plan.data
    service, old_image, new_image = str(data["service"]), str(data["from"]), str(data["to"])
    path = Path(str(data["file"]))
    steps = deploy.Steps(progress)
    with deploy.exclusive(ctx, plan.command):
        deploy.guard_compose_env(ctx.infra.env.read())
        original = path.read_bytes()
        if hashlib.sha256(original).hexdigest() != data["file_sha256"]:
            raise UserError(f"{path} changed since the plan was made; nothing was done.")
        if data.get("backup"):
            try:
                steps.run("full database backup", lambda: _backup(ctx, progress))
            except StepFailed as failed:
                return Result(
                    ok=False,
                    title=f"No upgrade: the backup failed ({short(failed.message, 300)}); "
                    "nothing was changed.",
                    rows=tuple(steps.rows),
                )
        edited, _how = set_service_image(original.decode("utf-8"), service, new_image)
        changed = False
        try:

            def edit() -> str:
                nonlocal changed
                atomic_replace(path, edited.encode("utf-8"))
                changed = True
                now = _effective_image(ctx, service)
                if now != new_image:
                    raise UserError(f"compose reads {now} for {service} after the edit")
                return f"{service}: image {new_image}"

            steps.run("edit the compose file", edit)
            steps.run(f"pull {new_image}", lambda: _pull(ctx, data))
            old_ids = deploy.container_ids(ctx, service)
            steps.run(f"recreate {service}", _compose(ctx, data["up"], "recreated"))
            _verify_service(ctx, data, new_image, old_ids, steps)
        except StepFailed as failed:
            if not changed:
                return Result(
                    ok=False,
                    title=f"Upgrade of {service} failed before anything changed: "
                    f"{short(failed.message, 300)}",
                    rows=tuple(steps.rows),
                )
            return _infra_undo(ctx, plan, path, original, steps, failed.message)
    return Result(
        ok=True,
        title=f"Upgraded {service} from {old_image} to {new_image}: healthy.",
        rows=tuple(steps.rows),
        data={"from": old_image, "to": new_image},
    )


def _pull(ctx: Context, data: Mapping[str, Any]) -> str:
    done = ctx.infra.compose.run(tuple(data["pull"]))
    said = (done.text + " " + done.stderr.decode("utf-8", errors="replace")).lower()
    if "skipped" in said:
        return "skipped: the service has `pull_policy: never` (the image must be local)"
    return "pulled"


def _backup(ctx: Context, progress: Progress) -> str:
    spec, _args, sub = _sub_plan(ctx, BACKUP_COMMAND)
    result = spec.execute(sub, ctx, progress)
    if not result.ok:
        raise UserError(result.title)
    return result.title


def _infra_undo(
    ctx: Context,
    plan: Plan,
    path: Path,
    original: bytes,
    steps: deploy.Steps,
    reason: str,
) -> Result:
    data = plan.data
    service, old_image = str(data["service"]), str(data["from"])
    restored = True
    try:

        def put_back() -> str:
            current = path.read_text(encoding="utf-8")
            edited, _how = set_service_image(original.decode("utf-8"), service, str(data["to"]))
            if current == edited:
                atomic_replace(path, original)
                return "the compose file is as it was"
            text, _how = set_service_image(current, service, old_image)
            atomic_replace(path, text.encode("utf-8"))
            return f"{service}: image {old_image} again (the file had other changes: kept)"

        steps.run("put the old image line back", put_back)
        again = _compose(ctx, data["up"], "up to date with the compose file")
        steps.run(f"recreate {service} again", again)
        # The container may never have been replaced (the failed `up`): any one will do now.
        _verify_service(ctx, data, old_image, set(), steps)
    except StepFailed:
        restored = False
    if restored:
        title = (
            f"Upgrade of {service} to {data['to']} failed ({short(reason, 300)}). Put back: "
            f"{old_image}; {service} is healthy with it again."
        )
    else:
        title = (
            f"Upgrade of {service} to {data['to']} failed ({short(reason, 300)}) and putting "
            f"{old_image} back did not fully work: check the rows below and `/hq health` now."
        )
    return Result(ok=False, title=title, rows=tuple(steps.rows), data={"restored": restored})


SPECS = (
    CommandSpec(
        name="upgrade app",
        summary="Fast-forward the app checkout to a commit, rebuild and restart the backend, "
        "run the migrations, health-gate.",
        plan=plan_app,
        execute=execute_app,
        options=(
            Option(
                "--ref",
                parse=parse_ref,
                metavar="REF",
                help="branch of HQ_GIT_REMOTE, tag or commit (default HQ_GIT_BRANCH)",
            ),
        ),
        destructive=True,
        roles=frozenset({Role.OPERATOR}),
        section="Service upgrades",
    ),
    CommandSpec(
        name="upgrade infra",
        summary="Change a service's image tag in the compose file, pull, recreate, verify; "
        "PostgreSQL gets a backup first.",
        plan=plan_infra,
        execute=execute_infra,
        args=(
            Arg("service", parse=parse_service, help="postgres, redis, minio, coturn..."),
            Arg("tag", parse=parse_tag, help="the new image tag"),
        ),
        destructive=True,
        roles=frozenset({Role.OPERATOR}),
        section="Service upgrades",
    ),
    CommandSpec(
        name="rollback",
        summary="Check out an earlier commit, rebuild and restart the backend (optionally "
        "restore a backup), health-gate.",
        plan=plan_rollback,
        execute=execute_rollback,
        args=(Arg("sha", parse=parse_sha, help="an earlier commit (7 to 40 hex digits)"),),
        options=(
            Option(
                "--restore",
                parse=parse_backup,
                metavar="BACKUP",
                help="also restore this database backup (a backup id, or latest)",
            ),
        ),
        destructive=True,
        roles=frozenset({Role.OPERATOR}),
        section="Rolling back",
    ),
)
