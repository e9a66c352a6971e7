"""Secret rotation (guide: Secret Rotation): ``/hq rotate jwt [--logout-all]``, ``rotate
db-password``, ``rotate minio-keys``, ``rotate turn-secret``. Each needs a second person.

Every rotation runs the same way:

1. make the new value(s) with :mod:`secrets` and register them with the redactor at once, before
   they are written anywhere;
2. (database password only) put a SCRAM verifier of the new password on the role, computed here,
   and prove a login with it;
3. write ``.env`` atomically (only those keys change);
4. recreate the services that read them (``up -d --no-deps --force-recreate``: a restart does not
   re-read ``.env``);
5. prove the new value works (and, where it can be asked, that the old one no longer does).

When a step fails, what was done is undone: the old verifier and the old ``.env`` values go back,
the services are recreated again and checked, and the result says so. A plan carries only
fingerprints (``sha256:`` and 12 hex digits) of the current values, never a value: the approval
is bound to the secret that was current when it was asked for.
"""

from __future__ import annotations

import base64
import logging
import math
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from minio.error import S3Error
from psycopg import sql

from commands import deploy, redis_admin
from commands.deploy import Gate, StepFailed, Steps
from commands.health import short
from commands.infra.postgres import _reason as postgres_reason
from commands.infra.s3 import S3
from commands.infra.turn import Turn, parse_address
from commands.redact import default_redactor, fingerprint
from commands.spec import (
    CommandSpec,
    Context,
    Option,
    Plan,
    Progress,
    Result,
    Role,
    Row,
    Status,
    Step,
    UserError,
)

log = logging.getLogger(__name__)

JWT_KEY, DB_PASSWORD_KEY, DB_USER_KEY, DB_NAME_KEY = (
    "JWT_SECRET",
    "DB_PASSWORD",
    "DB_USER",
    "DB_NAME",
)
MINIO_ACCESS, MINIO_SECRET = "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"
TURN_KEY = "COTURN_SECRET"
REFUSED_S3_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"}
SCRAM = b"scram-sha-256"
_ACCESS_ALPHABET = string.ascii_uppercase + string.digits


# --- new values ---------------------------------------------------------------------------------
def new_jwt_secret() -> str:
    """Return 48 random bytes in base64 (as ``openssl rand -base64 48``)."""
    return base64.b64encode(secrets.token_bytes(48)).decode("ascii")


def new_db_password() -> str:
    """Return 32 random bytes as URL-safe base64 (43 characters: safe in .env and URLs)."""
    return secrets.token_urlsafe(32)


def new_minio_keys() -> tuple[str, str]:
    """Return (access key of 20 upper-case letters and digits, secret key of 40 URL-safe
    characters), MinIO's usual shapes."""
    access = "".join(secrets.choice(_ACCESS_ALPHABET) for _ in range(20))
    return access, secrets.token_urlsafe(30)


def new_turn_secret() -> str:
    """Return 32 random bytes in hex (coturn's static-auth-secret)."""
    return secrets.token_hex(32)


def fingerprints(values: Mapping[str, str]) -> dict[str, str]:
    """Given KEY -> secret, return KEY -> fingerprint (safe to show and to hash into a plan)."""
    return {key: fingerprint(value) for key, value in sorted(values.items())}


def shown(fps: Mapping[str, str]) -> str:
    """Given KEY -> fingerprint, return ``KEY (sha256:...)`` pairs for a message."""
    return ", ".join(f"{key} ({fp})" for key, fp in fps.items())


# --- one attempt ----------------------------------------------------------------------------------
@dataclass
class Attempt:
    """The state of one rotation while it runs (the values never leave this object)."""

    ctx: Context
    plan: Plan
    steps: Steps
    env: dict[str, str]
    old: dict[str, str]
    new: dict[str, str]
    old_ids: set[str] = field(default_factory=set)
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> Any:
        return self.ctx.settings

    @property
    def timeout(self) -> float:
        return float(self.plan.data["gate_timeout"])


class Rotation:
    """What differs between rotations. The default services are read from settings; hooks do
    nothing unless a kind needs them."""

    kind = ""
    keys: tuple[str, ...] = ()
    services_setting: tuple[str, ...] = ()
    made = ""
    undo_extra = ""

    def services(self, settings: Any) -> tuple[str, ...]:
        return tuple(str(getattr(settings, name)) for name in self.services_setting)

    def generate(self) -> dict[str, str]:
        raise NotImplementedError

    def plan_extra(self, args: Mapping[str, Any], ctx: Context, env: Mapping[str, str]) -> Any:
        """Return extra plan data (must be JSON and deterministic)."""
        return {}

    def before_steps(self, data: Mapping[str, Any], ctx: Context) -> list[Step]:
        return []

    def verify_steps(self, data: Mapping[str, Any], ctx: Context) -> list[Step]:
        raise NotImplementedError

    def after_steps(self, data: Mapping[str, Any], ctx: Context) -> list[Step]:
        return []

    def summary_tail(self, data: Mapping[str, Any]) -> str:
        return ""

    def prepare(self, attempt: Attempt) -> None:
        """Change what must change before ``.env`` (the database role's password)."""

    def unprepare(self, attempt: Attempt) -> str | None:
        """Undo :meth:`prepare`; return what was done, or None when there was nothing."""
        return None

    def verify(self, attempt: Attempt) -> None:
        """Prove the new values work (raise StepFailed when not)."""
        raise NotImplementedError

    def verify_restored(self, attempt: Attempt) -> None:
        """Prove the old values work again (raise StepFailed when not)."""
        raise NotImplementedError

    def finish(self, attempt: Attempt) -> None:
        """Work after a successful rotation (its failure does not undo the rotation)."""


def _backend_gate(attempt: Attempt, jwt: str | None, name: str) -> None:
    attempt.steps.gate(
        name,
        lambda: deploy.backend_gate(
            attempt.ctx, jwt=jwt, timeout=attempt.timeout, old_ids=attempt.old_ids
        ),
    )


def _backend_gate_step(ctx: Context, data: Mapping[str, Any], what: str) -> Step:
    url = f"{ctx.settings.hq_backend_url}/health"
    return Step(f"health gate: GET {url} answers ok{what} (up to {data['gate_timeout']:g} s)")


# --- JWT ------------------------------------------------------------------------------------------
class JwtRotation(Rotation):
    kind = "jwt"
    keys = (JWT_KEY,)
    services_setting = ("hq_service_backend",)
    made = "48 random bytes, base64 (as `openssl rand -base64 48`)"

    def generate(self) -> dict[str, str]:
        return {JWT_KEY: new_jwt_secret()}

    def plan_extra(self, args: Mapping[str, Any], ctx: Context, env: Mapping[str, str]) -> Any:
        if not args.get("logout_all"):
            return {"logout_all": False}
        flush = redis_admin.plan_flushdb({}, ctx)
        return {"logout_all": True, "flush_target": flush.data["target"]}

    def verify_steps(self, data: Mapping[str, Any], ctx: Context) -> list[Step]:
        return [_backend_gate_step(ctx, data, " with the new secret's fingerprint")]

    def after_steps(self, data: Mapping[str, Any], ctx: Context) -> list[Step]:
        if not data.get("logout_all"):
            return []
        return [
            Step(
                f"--logout-all: FLUSHDB on Redis {data['flush_target']} (the session store): "
                "every user logs in again",
                ("redis-cli", "FLUSHDB"),
            )
        ]

    def summary_tail(self, data: Mapping[str, Any]) -> str:
        if data.get("logout_all"):
            return " Then the session store is flushed: every user is logged out at once."
        return (
            " Tokens signed with the old secret stop working; sessions are kept "
            "(add --logout-all to flush them)."
        )

    def verify(self, attempt: Attempt) -> None:
        _backend_gate(attempt, attempt.new[JWT_KEY], "backend healthy, new JWT fingerprint")

    def verify_restored(self, attempt: Attempt) -> None:
        _backend_gate(attempt, attempt.old[JWT_KEY], "backend healthy, old JWT fingerprint")

    def finish(self, attempt: Attempt) -> None:
        if not attempt.plan.data.get("logout_all"):
            return
        ctx = attempt.ctx
        flush = redis_admin.execute_flushdb(
            redis_admin.plan_flushdb({}, ctx), ctx, attempt.steps.progress
        )
        attempt.steps.rows.append(
            Row("flush the session store", Status.OK if flush.ok else Status.FAIL, flush.title)
        )


# --- database password --------------------------------------------------------------------------
def _connect(ctx: Context, user: str, password: str, dbname: str) -> Any:
    """Open a TCP connection with explicit credentials that must authenticate with SCRAM
    (``require_auth``). Raise InfraError-like UserError, never with the password."""
    timeout = float(ctx.settings.hq_health_timeout)
    host, port = ctx.settings.hq_postgres_host, ctx.settings.hq_postgres_port
    try:
        return psycopg.connect(
            host=host,
            port=port,
            user=user,
            password=password,
            dbname=dbname,
            connect_timeout=max(2, math.ceil(timeout)),
            application_name="hq-bot rotate",
            autocommit=True,
            require_auth="scram-sha-256",
            options=f"-c statement_timeout={int(timeout * 1000)}",
        )
    except psycopg.Error as exc:
        raise UserError(f"PostgreSQL at {host}:{port} (user {user}): {_pg_reason(exc)}.") from None


def _pg_reason(exc: BaseException) -> str:
    """Given a psycopg error, return its first useful line (the infra client's wording; libpq
    never prints a password, and the redactor masks the verifiers)."""
    return default_redactor()(postgres_reason(exc))


def _login(ctx: Context, user: str, password: str, dbname: str) -> str:
    conn = _connect(ctx, user, password, dbname)
    try:
        row = conn.execute("SELECT current_user").fetchone()
    finally:
        conn.close()
    return str(row[0]) if row else ""


def _alter_password(conn: Any, user: str, verifier: str) -> None:
    statement = sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        sql.Identifier(user), sql.Literal(verifier)
    )
    conn.execute(statement)


class DbPasswordRotation(Rotation):
    kind = "db-password"
    keys = (DB_PASSWORD_KEY,)
    services_setting = ("hq_service_backend",)
    made = "32 random bytes, URL-safe base64 (43 characters)"
    undo_extra = " (its old verifier into PostgreSQL first)"

    def generate(self) -> dict[str, str]:
        return {DB_PASSWORD_KEY: new_db_password()}

    def plan_extra(self, args: Mapping[str, Any], ctx: Context, env: Mapping[str, str]) -> Any:
        missing = [k for k in (DB_USER_KEY, DB_NAME_KEY) if not env.get(k)]
        if missing:
            raise UserError(f"The deployment's .env does not set {', '.join(missing)}.")
        return {"user": env[DB_USER_KEY], "database": env[DB_NAME_KEY]}

    def before_steps(self, data: Mapping[str, Any], ctx: Context) -> list[Step]:
        user = data["user"]
        where = f"{ctx.settings.hq_postgres_host}:{ctx.settings.hq_postgres_port}"
        return [
            Step(
                f"read {user}'s current password verifier from pg_authid (it is put back if a "
                "step fails; without the right to read it, one is derived from the old password)"
            ),
            Step(
                f"ALTER ROLE {user} PASSWORD '<SCRAM-SHA-256 verifier computed by hq-bot>': "
                "the password itself never reaches PostgreSQL or its logs"
            ),
            Step(f"log in as {user} with the new password over TCP at {where} (SCRAM)"),
            Step(f"check the old password no longer logs in at {where}"),
        ]

    def verify_steps(self, data: Mapping[str, Any], ctx: Context) -> list[Step]:
        return [_backend_gate_step(ctx, data, ", with its PostgreSQL check ok")]

    def prepare(self, attempt: Attempt) -> None:
        ctx, data = attempt.ctx, attempt.plan.data
        user, dbname = str(data["user"]), str(data["database"])
        old, new = attempt.old[DB_PASSWORD_KEY], attempt.new[DB_PASSWORD_KEY]

        def alter() -> str:
            conn = _connect(ctx, user, old, dbname)
            try:
                how = "read from pg_authid"
                try:
                    row = conn.execute(
                        "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (user,)
                    ).fetchone()
                    previous = str(row[0]) if row and row[0] else ""
                except psycopg.errors.InsufficientPrivilege:
                    previous = ""
                if not previous:
                    how = "derived from the old password"
                    previous = conn.pgconn.encrypt_password(old.encode(), user.encode(), SCRAM)
                    previous = previous.decode("ascii")
                verifier = conn.pgconn.encrypt_password(new.encode(), user.encode(), SCRAM)
                verifier = verifier.decode("ascii")
                default_redactor().add([previous, verifier])
                attempt.scratch["old_verifier"] = previous
                _alter_password(conn, user, verifier)
                attempt.scratch["altered"] = True
            except psycopg.Error as exc:
                raise UserError(f"PostgreSQL: {_pg_reason(exc)}.") from None
            finally:
                conn.close()
            return f"the old verifier was {how}; ALTER ROLE {user} done"

        attempt.steps.run(f"ALTER ROLE {user} (SCRAM verifier)", alter)
        attempt.steps.run(
            "log in with the new password (TCP, SCRAM)",
            lambda: f"logged in as {_login(ctx, user, new, dbname)}",
        )
        attempt.steps.run(
            "the old password is refused", lambda: self._refused(ctx, user, old, dbname)
        )

    @staticmethod
    def _refused(ctx: Context, user: str, password: str, dbname: str) -> str:
        try:
            _login(ctx, user, password, dbname)
        except UserError as err:
            if "password authentication failed" in err.message:
                return "password authentication failed, as it should"
            raise
        raise UserError("the old password still logs in")

    def unprepare(self, attempt: Attempt) -> str | None:
        if not attempt.scratch.get("altered"):
            return None
        ctx, data = attempt.ctx, attempt.plan.data
        user, dbname = str(data["user"]), str(data["database"])
        last: UserError | None = None
        for password in (attempt.new[DB_PASSWORD_KEY], attempt.old[DB_PASSWORD_KEY]):
            try:
                conn = _connect(ctx, user, password, dbname)
            except UserError as err:
                last = err
                continue
            try:
                _alter_password(conn, user, str(attempt.scratch["old_verifier"]))
            except psycopg.Error as exc:
                raise UserError(f"PostgreSQL: {_pg_reason(exc)}.") from None
            finally:
                conn.close()
            return f"{user} has its old password verifier again"
        raise last or UserError("PostgreSQL could not be reached")

    def verify(self, attempt: Attempt) -> None:
        _backend_gate(attempt, attempt.env.get(JWT_KEY), "backend healthy, new DB_PASSWORD in use")

    def verify_restored(self, attempt: Attempt) -> None:
        ctx, data = attempt.ctx, attempt.plan.data
        user, dbname = str(data["user"]), str(data["database"])
        attempt.steps.run(
            "the old password logs in again",
            lambda: f"logged in as {_login(ctx, user, attempt.old[DB_PASSWORD_KEY], dbname)}",
        )
        _backend_gate(attempt, attempt.env.get(JWT_KEY), "backend healthy, old DB_PASSWORD in use")


# --- MinIO keys ---------------------------------------------------------------------------------
def _s3_with(ctx: Context, access: str, secret: str) -> S3:
    keys = {MINIO_ACCESS: access, MINIO_SECRET: secret}
    s = ctx.settings
    return S3(s.hq_s3_endpoint, s.hq_s3_bucket, lambda: keys, float(s.hq_health_timeout))


def _list_bucket(client: S3) -> tuple[bool, str]:
    """List the bucket (one object is enough). Return (True, detail) when it worked, (False,
    S3 error code) when the server refused; raise UserError when it cannot be reached."""
    try:
        first = next(iter(client.client.list_objects(client.bucket)), None)
    except S3Error as exc:
        return False, str(exc.code)
    except UserError:
        raise
    except Exception as exc:  # urllib3 raises many types; all mean unreachable
        raise UserError(f"S3 at {client.endpoint} is unreachable ({type(exc).__name__})") from None
    return True, f"listed {client.bucket} ({'not empty' if first else 'empty'})"


def _keys_work(ctx: Context, access: str, secret: str, timeout: float) -> Gate:
    client = _s3_with(ctx, access, secret)

    def check() -> tuple[bool, str]:
        ok, detail = _list_bucket(client)
        return ok, detail if ok else f"the keys were refused ({detail})"

    service = ctx.settings.hq_service_minio
    return deploy.poll(check, timeout=timeout, crashed=lambda: deploy.crashed_reason(ctx, service))


class MinioKeysRotation(Rotation):
    kind = "minio-keys"
    keys = (MINIO_ACCESS, MINIO_SECRET)
    services_setting = ("hq_service_minio", "hq_service_backend")
    made = "an access key of 20 letters and digits and a secret key of 40 URL-safe characters"

    def generate(self) -> dict[str, str]:
        access, secret = new_minio_keys()
        return {MINIO_ACCESS: access, MINIO_SECRET: secret}

    def verify_steps(self, data: Mapping[str, Any], ctx: Context) -> list[Step]:
        bucket = ctx.settings.hq_s3_bucket
        return [
            Step(f"list the bucket {bucket} with the new keys (up to {data['gate_timeout']:g} s)"),
            Step(f"check the old keys are refused by {ctx.settings.hq_s3_endpoint}"),
            _backend_gate_step(ctx, data, ""),
            Step("hq-bot's own S3 client switches to the new keys"),
        ]

    def verify(self, attempt: Attempt) -> None:
        ctx, new, old = attempt.ctx, attempt.new, attempt.old
        attempt.steps.gate(
            "the new keys list the bucket",
            lambda: _keys_work(ctx, new[MINIO_ACCESS], new[MINIO_SECRET], attempt.timeout),
        )

        def old_refused() -> str:
            ok, code = _list_bucket(_s3_with(ctx, old[MINIO_ACCESS], old[MINIO_SECRET]))
            if ok:
                raise UserError("the old keys still work")
            if code not in REFUSED_S3_CODES:
                raise UserError(f"the old keys got {code}, not a refusal of the keys")
            return f"refused ({code})"

        attempt.steps.run("the old keys are refused", old_refused)
        _backend_gate(attempt, attempt.env.get(JWT_KEY), "backend healthy with the new keys")
        ctx.infra.s3.reset()

    def verify_restored(self, attempt: Attempt) -> None:
        ctx, old = attempt.ctx, attempt.old
        ctx.infra.s3.reset()
        attempt.steps.gate(
            "the old keys list the bucket again",
            lambda: _keys_work(ctx, old[MINIO_ACCESS], old[MINIO_SECRET], attempt.timeout),
        )
        _backend_gate(attempt, attempt.env.get(JWT_KEY), "backend healthy with the old keys")


# --- TURN secret --------------------------------------------------------------------------------
def _turn(ctx: Context) -> Turn:
    host, port = parse_address(ctx.settings.hq_turn_address)
    return Turn(host, port, float(ctx.settings.hq_health_timeout))


class TurnSecretRotation(Rotation):
    kind = "turn-secret"
    keys = (TURN_KEY,)
    services_setting = ("hq_service_coturn",)
    made = "32 random bytes, hex"

    def generate(self) -> dict[str, str]:
        return {TURN_KEY: new_turn_secret()}

    def verify_steps(self, data: Mapping[str, Any], ctx: Context) -> list[Step]:
        service, address = ctx.settings.hq_service_coturn, ctx.settings.hq_turn_address
        return [
            Step(
                f"{service}'s new container runs and is healthy (up to {data['gate_timeout']:g} s)"
            ),
            Step(
                f"a TURN Allocate at {address} (UDP) with credentials made from the new secret "
                "succeeds, and one made from the old secret gets 401"
            ),
        ]

    def _running(self, attempt: Attempt, name: str) -> None:
        service = attempt.settings.hq_service_coturn
        attempt.steps.gate(
            name,
            lambda: deploy.service_gate(
                attempt.ctx, service, timeout=attempt.timeout, old_ids=attempt.old_ids
            ),
        )

    def _check(self, attempt: Attempt, secret: str, accepted: bool) -> str:
        outcome = _turn(attempt.ctx).check_secret(secret)
        if outcome.accepted != accepted:
            raise UserError(
                outcome.detail + (": refused" if accepted else ": the old secret still works")
            )
        return outcome.detail

    def verify(self, attempt: Attempt) -> None:
        self._running(attempt, "coturn runs and is healthy")
        new, old = attempt.new[TURN_KEY], attempt.old[TURN_KEY]
        attempt.steps.run(
            "TURN: the new COTURN_SECRET is accepted", lambda: self._check(attempt, new, True)
        )
        attempt.steps.run(
            "TURN: the old COTURN_SECRET is refused", lambda: self._check(attempt, old, False)
        )

    def verify_restored(self, attempt: Attempt) -> None:
        self._running(attempt, "coturn runs and is healthy again")
        old = attempt.old[TURN_KEY]
        attempt.steps.run(
            "TURN: the old COTURN_SECRET is accepted again", lambda: self._check(attempt, old, True)
        )


ROTATIONS: dict[str, Rotation] = {
    r.kind: r
    for r in (JwtRotation(), DbPasswordRotation(), MinioKeysRotation(), TurnSecretRotation())
}


# --- plan -----------------------------------------------------------------------------------------
def make_plan(kind: str, args: Mapping[str, Any], ctx: Context) -> Plan:
    """Given a rotation kind and its arguments, return the plan. Reads the deployment's .env for
    the fingerprints of the current values (the approval is bound to them). Raise UserError when
    .env cannot be read or lacks a key."""
    rotation = ROTATIONS[kind]
    settings = ctx.settings
    env = ctx.infra.env.read()
    missing = [k for k in rotation.keys if not env.get(k)]
    if missing:
        raise UserError(f"{settings.hq_env_file} does not set {', '.join(missing)}.")
    services = rotation.services(settings)
    recreate = deploy.recreate_argv(ctx, services)
    data: dict[str, Any] = {
        "kind": kind,
        "keys": list(rotation.keys),
        "current": fingerprints({k: env[k] for k in rotation.keys}),
        "env_file": str(settings.hq_env_file),
        "services": list(services),
        "recreate": list(recreate),
        "gate_timeout": float(settings.hq_gate_timeout),
    }
    data.update(rotation.plan_extra(args, ctx, env))
    names = " and ".join(rotation.keys)
    listed = ", ".join(services)
    steps = [
        Step(f"make a new {names} ({rotation.made}); never shown, only fingerprints"),
        *rotation.before_steps(data, ctx),
        Step(
            f"write {names} to {data['env_file']} atomically (temporary file, fsync, rename; "
            "every other line kept)"
        ),
        Step(
            f"recreate {listed} so {'they read' if len(services) > 1 else 'it reads'} .env again",
            recreate,
        ),
        *rotation.verify_steps(data, ctx),
        *rotation.after_steps(data, ctx),
        Step(
            f"if a step fails: the old {names} {'go' if len(rotation.keys) > 1 else 'goes'} back"
            f"{rotation.undo_extra}, {listed} recreated again and checked"
        ),
    ]
    summary = (
        f"Rotate {shown(data['current'])} of the deployment: new value"
        f"{'s' if len(rotation.keys) > 1 else ''} in .env, then {listed} recreated and "
        f"checked with {'them' if len(rotation.keys) > 1 else 'it'}." + rotation.summary_tail(data)
    )
    return Plan(
        command=f"rotate {kind}",
        summary=summary,
        steps=tuple(steps),
        targets=(*(f"env:{k}" for k in rotation.keys), *(f"service:{s}" for s in services)),
        data=data,
    )


# --- execute --------------------------------------------------------------------------------------
def execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
    """Run a rotation plan: see the module's docstring. Never raises for a failed step: the
    result says what failed and what was put back."""
    rotation = ROTATIONS[str(plan.data["kind"])]
    with deploy.exclusive(ctx, f"rotate {plan.data['kind']}"):
        env = ctx.infra.env.read()
        deploy.guard_compose_env(env)
        keys = tuple(plan.data["keys"])
        if any(not env.get(k) for k in keys):
            raise UserError(f"{plan.data['env_file']} no longer sets {', '.join(keys)}.")
        old = {k: env[k] for k in keys}
        if fingerprints(old) != plan.data["current"]:
            raise UserError("The secret changed since the plan was made; nothing was done.")
        new = rotation.generate()
        default_redactor().add(new.values())  # before it is written anywhere
        attempt = Attempt(ctx, plan, Steps(progress), env, old, new)
        return _run(rotation, attempt)


def _run(rotation: Rotation, attempt: Attempt) -> Result:
    ctx, plan = attempt.ctx, attempt.plan
    names = " and ".join(attempt.old)
    services = list(plan.data["services"])
    done = {"env": False, "recreate": False}
    try:
        rotation.prepare(attempt)

        def write_env() -> str:
            ctx.infra.env.update(attempt.new, expect=attempt.old)
            done["env"] = True
            return f"now {shown(fingerprints(attempt.new))}"

        attempt.steps.run(f"write {names} to .env", write_env)
        for service in services:
            attempt.old_ids |= deploy.container_ids(ctx, service)

        def recreate() -> str:
            done["recreate"] = True
            ctx.infra.compose.run(tuple(plan.data["recreate"]))
            return f"{', '.join(services)} recreated"

        attempt.steps.run(f"recreate {', '.join(services)}", recreate)
        rotation.verify(attempt)
    except Exception as exc:
        if isinstance(exc, UserError):
            reason = exc.message
        else:
            log.exception("rotate %s failed unexpectedly", rotation.kind)
            reason = f"an unexpected error ({type(exc).__name__}; see hq-bot's log)"
            attempt.steps.rows.append(Row("unexpected error", Status.FAIL, reason))
        return _undo(rotation, attempt, done, reason)
    try:
        rotation.finish(attempt)
    except UserError as err:
        attempt.steps.rows.append(Row("after the rotation", Status.FAIL, short(err.message)))
    ok = all(r.status != Status.FAIL for r in attempt.steps.rows)
    was, now = shown(plan.data["current"]), shown(fingerprints(attempt.new))
    title = (
        f"Rotated {names}, and {', '.join(services)} healthy with the new value. "
        f"Before {was}; now {now}."
    )
    if not ok:
        title = f"Rotated {names} (now {now}), but a step after it failed: see below."
    return Result(
        ok=ok, title=title, rows=tuple(attempt.steps.rows), data={"new": fingerprints(attempt.new)}
    )


def _undo(rotation: Rotation, attempt: Attempt, done: Mapping[str, bool], reason: str) -> Result:
    """Put the old values back after a failed step, recreate and check; return the result."""
    ctx, plan = attempt.ctx, attempt.plan
    names = " and ".join(attempt.old)
    services = list(plan.data["services"])
    changed = done["env"] or bool(attempt.scratch.get("altered"))
    if not changed and not done["recreate"]:
        return Result(
            ok=False,
            title=f"Rotation of {names} failed before anything was changed "
            f"({short(reason, 300)}). Nothing changed.",
            rows=tuple(attempt.steps.rows),
            data={"restored": True},
        )
    attempt.steps.progress(f"the rotation failed ({short(reason)}); putting the old {names} back")
    restored = True

    def undo_step(name: str, fn: Callable[[], str]) -> None:
        nonlocal restored
        try:
            attempt.steps.run(name, fn)
        except StepFailed:
            restored = False
        except Exception as exc:
            log.exception("undo step %r failed", name)
            attempt.steps.rows.append(Row(name, Status.FAIL, f"unexpected {type(exc).__name__}"))
            restored = False

    def unprepare() -> str:
        return rotation.unprepare(attempt) or "nothing to undo"

    def env_back() -> str:
        ctx.infra.env.update(attempt.old, expect=attempt.new)
        return f"back to {shown(fingerprints(attempt.old))}"

    def recreate_again() -> str:
        ctx.infra.compose.run(tuple(plan.data["recreate"]))
        return f"{', '.join(services)} recreated"

    if attempt.scratch.get("altered"):
        undo_step("put the old password verifier back", unprepare)
    if done["env"]:
        undo_step(f"put the old {names} back in .env", env_back)
    if done["recreate"]:
        attempt.old_ids = set().union(*(deploy.container_ids(ctx, s) for s in services))
        undo_step(f"recreate {', '.join(services)} again", recreate_again)
    try:
        rotation.verify_restored(attempt)
    except StepFailed:
        restored = False
    except Exception as exc:
        log.exception("checking the restored %s failed", names)
        attempt.steps.rows.append(Row("check", Status.FAIL, f"unexpected {type(exc).__name__}"))
        restored = False
    was = shown(plan.data["current"])
    listed = ", ".join(services)
    if restored:
        title = (
            f"Rotation of {names} failed ({short(reason, 300)}). Put back: the old value "
            f"({was}); {listed} {'are' if len(services) > 1 else 'is'} healthy with it again."
        )
    else:
        title = (
            f"Rotation of {names} failed ({short(reason, 300)}) and putting the old value "
            f"({was}) back did not fully work: check the rows below and the deployment "
            "(`/hq health`) now."
        )
    return Result(
        ok=False, title=title, rows=tuple(attempt.steps.rows), data={"restored": restored}
    )


# --- specs ----------------------------------------------------------------------------------------
def _planner(kind: str) -> Callable[[Mapping[str, Any], Context], Plan]:
    def plan(args: Mapping[str, Any], ctx: Context) -> Plan:
        return make_plan(kind, args, ctx)

    return plan


def _rotation(kind: str, summary: str, *options: Option) -> CommandSpec:
    """Given a rotation's kind (``jwt``), return the spec of ``rotate KIND``: every rotation is
    planned by :func:`make_plan`, run by :func:`execute` and needs a second person."""
    return CommandSpec(
        name=f"rotate {kind}",
        summary=summary,
        plan=_planner(kind),
        execute=execute,
        options=options,
        destructive=True,
        roles=frozenset({Role.OPERATOR}),
        section="Secret rotation",
    )


SPECS = (
    _rotation(
        "jwt",
        "New JWT_SECRET in .env, backend recreated and checked; --logout-all also flushes the "
        "session store.",
        Option(
            "--logout-all",
            flag=True,
            default=False,
            help="also flush the Redis session store: every user logs in again",
        ),
    ),
    _rotation(
        "db-password",
        "New database password: ALTER ROLE with a SCRAM verifier, .env, backend recreated and "
        "checked.",
    ),
    _rotation(
        "minio-keys",
        "New MinIO key pair in .env, minio and backend recreated; new keys proven, old keys "
        "refused.",
    ),
    _rotation(
        "turn-secret",
        "New COTURN_SECRET in .env, coturn recreated; TURN credentials from the new secret proven.",
    ),
)
