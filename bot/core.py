"""One path, three doors: every command from Slack (HTTP or Socket Mode), the console or the
scheduler goes through :meth:`Bot.submit`: parse, policy, record, plan, then run on our own
bounded worker pool, reporting through the door's :class:`Responder`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import text

from approvals.db import make_engine, session_factory, upgrade
from approvals.models import OpState
from approvals.operations import OperationStore, new_id
from approvals.policy import Policy
from bot import logs
from bot.settings import Settings
from commands.parser import Parsed, parse
from commands.redact import Redactor, default_redactor
from commands.registry import REGISTRY
from commands.spec import Actor, CommandSpec, Plan, Result, UserError

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 30.0


class Responder(Protocol):
    """Where one command's progress and result go (a Slack thread, the console)."""

    def started(self, op_id: str, headline: str) -> None: ...

    def progress(self, op_id: str, line: str) -> None: ...

    def finished(self, op_id: str, result: Result) -> None: ...


@dataclass(frozen=True)
class Reply:
    """The door's immediate answer (Slack's ack body, the console's first line)."""

    text: str
    ok: bool = True
    op_id: str = ""
    result: Result | None = None
    future: Future[Result] | None = None
    ephemeral: bool = True


@dataclass
class RunContext:
    """The context handed to plan and execute (see commands.spec.Context)."""

    settings: Settings
    actor: Actor
    operation_id: str
    infra: Any
    governance: Any
    registry: Mapping[str, CommandSpec]


class BusyError(Exception):
    pass


class BoundedPool:
    """Our own worker pool: ``workers`` threads and at most ``queue_limit`` waiting jobs, so a
    burst of commands is answered 'busy' rather than queued without end."""

    def __init__(self, workers: int, queue_limit: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hq-worker")
        self._slots = threading.BoundedSemaphore(workers + queue_limit)

    def submit(self, fn: Callable[[], Result]) -> Future[Result]:
        if not self._slots.acquire(blocking=False):
            raise BusyError
        try:
            future = self._executor.submit(fn)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _f: self._slots.release())
        return future

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)


def usage_reply(err: UserError) -> str:
    text = f":warning: {err.message}"
    if err.usage:
        text += f"\nUsage: `{err.usage}`" if "\n" not in err.usage else f"\nUsage:\n{err.usage}"
    return text


@dataclass
class Bot:
    """The shared core. Build it with :meth:`create`; transports call :meth:`submit`."""

    settings: Settings
    ops: OperationStore
    policy: Policy
    pool: BoundedPool
    redact: Redactor
    infra: Any = None
    governance: Any = None
    registry: Mapping[str, CommandSpec] = field(default_factory=lambda: REGISTRY)
    _running: set[str] = field(default_factory=set)
    _running_lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    engine: Any = None
    _slack_checked: tuple[float, str] | None = None

    @classmethod
    def create(cls, settings: Settings, *, infra: Any = None) -> Bot:
        """Given settings, open (and migrate) the database and return a ready bot."""
        redactor = default_redactor()
        redactor.add(settings.secret_values())
        engine = make_engine(settings.hq_database_url)
        upgrade(engine)
        sessions = session_factory(engine)
        bot = cls(
            settings=settings,
            ops=OperationStore(sessions),
            policy=Policy.from_settings(settings),
            pool=BoundedPool(settings.hq_workers, settings.hq_queue_limit),
            redact=redactor,
            infra=infra,
        )
        bot.engine = engine
        return bot

    # --- the one path -----------------------------------------------------------------------
    def submit(self, actor: Actor, text: str, responder: Responder) -> Reply:
        """Given who asked and the text after ``/hq``, answer at once; long work continues on
        the pool and reports through ``responder``. Never raises for bad input."""
        op_id = new_id()
        token = logs.operation_id.set(op_id)
        try:
            return self._submit(op_id, actor, text, responder)
        finally:
            logs.operation_id.reset(token)

    def _record(self, op_id: str, actor: Actor, text: str, state: OpState, **fields: Any) -> None:
        self.ops.create(
            op_id=op_id,
            source=actor.source,
            user_id=actor.user_id,
            user_name=actor.user_name,
            channel_id=actor.channel_id,
            text=self.redact(text)[:2000],
            state=state,
            **fields,
        )

    def _submit(self, op_id: str, actor: Actor, text: str, responder: Responder) -> Reply:
        try:
            parsed = parse(text, self.registry)
        except UserError as err:
            self._record(op_id, actor, text, OpState.REJECTED, error=self.redact(err.message))
            log.info("rejected command from %s: %s", actor.user_id, err.message)
            return Reply(text=usage_reply(err), ok=False, op_id=op_id)
        spec = parsed.spec
        refusal = self.policy.refusal(actor, spec)
        if refusal:
            self._record(op_id, actor, text, OpState.REFUSED, command=spec.name, error=refusal)
            return Reply(text=f":no_entry: {refusal}", ok=False, op_id=op_id)
        ctx = self.context(actor, op_id)
        try:
            plan = spec.plan(parsed.args, ctx)
        except UserError as err:
            self._record(op_id, actor, text, OpState.REJECTED, command=spec.name, error=err.message)
            return Reply(text=usage_reply(err), ok=False, op_id=op_id)
        if parsed.dry_run:
            self._record(op_id, actor, text, OpState.DRY_RUN, command=spec.name)
            return Reply(text=f"*Dry run*, nothing was done:\n{plan.as_text()}", op_id=op_id)
        if spec.destructive:
            return self._destructive(op_id, actor, text, parsed, plan)
        if spec.immediate:
            result = self._execute(spec, plan, ctx, lambda _line: None)
            state = OpState.SUCCEEDED if result.ok else OpState.FAILED
            self._record(
                op_id, actor, text, state, command=spec.name, result_summary=result.title,
            )
            return Reply(text=result.text or result.title, ok=result.ok, op_id=op_id, result=result)
        self._record(op_id, actor, text, OpState.QUEUED, command=spec.name)
        try:
            future = self.pool.submit(lambda: self.run(op_id, spec, plan, ctx, responder))
        except BusyError:
            self.ops.transition(op_id, [OpState.QUEUED], OpState.REFUSED, error="busy")
            return Reply(
                text=":hourglass: hq-bot is busy with other work; try again in a minute.",
                ok=False,
                op_id=op_id,
            )
        return Reply(text=f"Working on `{spec.name}` ({op_id}).", op_id=op_id, future=future)

    def _destructive(
        self, op_id: str, actor: Actor, text: str, parsed: Parsed, plan: Plan
    ) -> Reply:
        message = "needs a second person's approval, and approvals are not configured"
        self._record(op_id, actor, text, OpState.REFUSED, command=parsed.spec.name, error=message)
        return Reply(text=f":no_entry: `{parsed.spec.name}` {message}.", ok=False, op_id=op_id)

    def context(self, actor: Actor, op_id: str) -> RunContext:
        return RunContext(
            settings=self.settings,
            actor=actor,
            operation_id=op_id,
            infra=self.infra,
            governance=self.governance,
            registry=self.registry,
        )

    def _execute(
        self, spec: CommandSpec, plan: Plan, ctx: RunContext, progress: Callable[[str], None]
    ) -> Result:
        try:
            return spec.execute(plan, ctx, progress)
        except UserError as err:
            return Result(ok=False, title=self.redact(err.message))
        except Exception:
            log.exception("command %s failed", spec.name)
            return Result(
                ok=False,
                title=f"`{spec.name}` failed unexpectedly. Operation {ctx.operation_id}: "
                "the details are in hq-bot's log.",
            )

    def run(
        self, op_id: str, spec: CommandSpec, plan: Plan, ctx: RunContext, responder: Responder
    ) -> Result:
        """Run a planned command on the calling thread (a pool worker), reporting through the
        responder. Exactly one caller wins the queued -> running move."""
        token = logs.operation_id.set(op_id)
        try:
            if not self.ops.transition(op_id, [OpState.QUEUED], OpState.RUNNING):
                return Result(ok=False, title=f"{op_id} was already taken by another worker.")
            with self._running_lock:
                self._running.add(op_id)
            self._safe(responder.started, op_id, f"`{spec.name}`: {plan.summary}")

            def progress(line: str) -> None:
                self._safe(responder.progress, op_id, self.redact(line))

            result = self._execute(spec, plan, ctx, progress)
            state = OpState.SUCCEEDED if result.ok else OpState.FAILED
            self.ops.transition(
                op_id,
                [OpState.RUNNING],
                state,
                result_summary=self.redact(result.title)[:1000],
                error="" if result.ok else self.redact(result.title)[:1000],
            )
            self._safe(responder.finished, op_id, result)
            return result
        finally:
            with self._running_lock:
                self._running.discard(op_id)
            logs.operation_id.reset(token)

    def _safe(self, fn: Callable[..., None], *args: Any) -> None:
        """Call a responder method; a failed Slack call is logged, never fatal to the work."""
        try:
            fn(*args)
        except Exception:
            log.exception("could not report to the user")

    def self_health(self, client: Any = None) -> dict[str, Any]:
        """Return the bot's own health: its database and, when given, its Slack connection."""
        status: dict[str, Any] = {"ok": True, "database": "ok"}
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            status["ok"] = False
            status["database"] = f"unreachable ({type(exc).__name__})"
        if client is not None:
            status["slack"] = self._slack_status(client)
            status["ok"] = status["ok"] and status["slack"] == "ok"
        return status

    def _slack_status(self, client: Any) -> str:
        now = time.monotonic()
        cached = self._slack_checked
        if cached and now - cached[0] < 60:
            return cached[1]
        try:
            client.auth_test()
            outcome = "ok"
        except Exception as exc:
            outcome = f"unreachable ({type(exc).__name__})"
        self._slack_checked = (now, outcome)
        return outcome

    # --- life cycle --------------------------------------------------------------------------
    def start_heartbeat(self) -> threading.Thread:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                with self._running_lock:
                    running = list(self._running)
                try:
                    self.ops.heartbeat(running)
                except Exception:
                    log.exception("heartbeat failed")

        thread = threading.Thread(target=beat, name="hq-heartbeat", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._stop.set()
        self.pool.shutdown(wait=True)
        if self.engine is not None:
            self.engine.dispose()
