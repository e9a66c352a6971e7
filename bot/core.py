"""One path, three doors: every command from Slack (HTTP or Socket Mode), the console or the
scheduler goes through :meth:`Bot.submit`: parse, policy, record, plan, then run on our own
bounded worker pool, reporting through the door's :class:`Responder`."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from approvals.audit import AuditError, AuditTrail, load_key
from approvals.db import make_engine, session_factory, upgrade
from approvals.models import (
    FINAL_STATES,
    ApprovalRequest,
    Backup,
    MirrorRun,
    Operation,
    OpState,
    ReqState,
    utcnow,
)
from approvals.operations import OperationStore, new_id
from approvals.policy import Policy
from approvals.requests import ApprovalPolicy, Decision, GroupResolver, Requests
from bot import logs, observability
from bot.settings import Settings
from commands.parser import Parsed, parse
from commands.redact import Redactor, default_redactor
from commands.registry import REGISTRY
from commands.spec import Actor, CommandSpec, Plan, Result, Row, Status, UserError

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 30.0


class Responder(Protocol):
    """Where one command's progress and result go (a Slack thread, the console)."""

    def started(self, op_id: str, headline: str) -> None: ...

    def progress(self, op_id: str, line: str) -> None: ...

    def finished(self, op_id: str, result: Result) -> None: ...


class Cards(Protocol):
    """Where approval cards and announcements go (Slack messages, or the console)."""

    def post(self, request: ApprovalRequest) -> tuple[str, str] | None: ...

    def update(self, request: ApprovalRequest) -> None: ...

    def tell(self, request: ApprovalRequest, text: str) -> None: ...

    def announce(self, text: str) -> None: ...

    def post_result(self, result: Result, heading: str) -> None: ...

    def responder(self, request: ApprovalRequest) -> Responder | None: ...


class LogCards:
    """Cards for a bot with no Slack: everything goes to the log."""

    def post(self, request: ApprovalRequest) -> tuple[str, str] | None:
        log.info("approval request %s for %s is pending", request.id, request.command)
        return None

    def update(self, request: ApprovalRequest) -> None:
        log.info("approval request %s is now %s", request.id, request.state)

    def tell(self, request: ApprovalRequest, text: str) -> None:
        log.info("to %s: %s", request.requester_id, text)

    def announce(self, text: str) -> None:
        log.warning("announcement: %s", text)

    def post_result(self, result: Result, heading: str) -> None:
        log.info("%s: %s", heading, result.title)

    def responder(self, request: ApprovalRequest) -> Responder | None:
        return None


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
    responder: Responder | None = None
    followups: list[Future[Result]] = field(default_factory=list)


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


DB_DOWN = (
    ":no_entry: hq-bot cannot write to its database (operations and audit trail), so nothing "
    "was run. Check HQ_DATABASE_URL and the database server."
)
AUDIT_DOWN = (
    ":no_entry: The audit trail cannot be written ({why}), so nothing was run. "
    "Fix the bot's database and ask again."
)


@dataclass
class Bot:
    """The shared core. Build it with :meth:`create`; transports call :meth:`submit` and
    :meth:`decide`."""

    settings: Settings
    ops: OperationStore
    policy: Policy
    pool: BoundedPool
    redact: Redactor
    audit: AuditTrail
    requests: Requests
    infra: Any = None
    cards: Cards = field(default_factory=LogCards)
    registry: Mapping[str, CommandSpec] = field(default_factory=lambda: REGISTRY)
    engine: Any = None
    scheduler: Any = None
    slack_client: Any = None
    _running: set[str] = field(default_factory=set)
    _running_lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _slack_checked: tuple[float, str] | None = None

    @classmethod
    def create(
        cls, settings: Settings, *, infra: Any = None, resolve_group: GroupResolver | None = None
    ) -> Bot:
        """Given settings, open (and migrate) the database and return a ready bot. Raise
        SettingsError when the audit key is missing for a shared database."""
        redactor = default_redactor()
        redactor.add(settings.secret_values())
        key = load_key(settings)
        engine = make_engine(settings.hq_database_url)
        upgrade(engine)
        sessions = session_factory(engine)
        return cls(
            settings=settings,
            ops=OperationStore(sessions),
            policy=Policy.from_settings(settings),
            pool=BoundedPool(settings.hq_workers, settings.hq_queue_limit),
            redact=redactor,
            audit=AuditTrail(engine, key, redactor),
            requests=Requests(sessions, ApprovalPolicy.from_settings(settings, resolve_group)),
            infra=infra,
            engine=engine,
        )

    @property
    def governance(self) -> Bot:
        return self

    @property
    def sessions(self) -> sessionmaker[Session]:
        """Sessions of the bot's own database (catalogues, job runs, alert states)."""
        return self.requests.sessions

    # --- the one path -----------------------------------------------------------------------
    def submit(self, actor: Actor, text: str, responder: Responder) -> Reply:
        """Given who asked and the text after ``/hq``, answer at once; long work continues on
        the pool and reports through ``responder``. Never raises for bad input."""
        op_id = new_id()
        token = logs.operation_id.set(op_id)
        try:
            return self._submit(op_id, actor, text, responder)
        except SQLAlchemyError:
            log.exception("database unavailable")
            return Reply(text=DB_DOWN, ok=False, op_id=op_id)
        finally:
            logs.operation_id.reset(token)

    def _log(
        self,
        op_id: str,
        actor: Actor,
        text: str,
        state: OpState,
        *,
        kind: str,
        strict: bool,
        command: str = "",
        data: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        """Record the operation and its audit event in one transaction. ``strict`` guards an
        action: a failed write raises AuditError (fail closed). Otherwise the operation is
        recorded alone when the audit event cannot be."""
        row = dict(
            op_id=op_id,
            source=actor.source,
            user_id=actor.user_id,
            user_name=actor.user_name,
            channel_id=actor.channel_id,
            text=self.redact(text)[:2000],
            state=state,
            command=command,
            **fields,
        )
        event = {"text": row["text"][:500], **(data or {})}
        if state in FINAL_STATES:
            observability.COMMANDS.labels(command or "(none)", state.value).inc()
        try:
            self.audit.append(
                kind,
                actor=actor.user_id,
                op_id=op_id,
                command=command,
                data=event,
                also=[(Operation, OperationStore.values(**row))],
            )
        except AuditError:
            if strict:
                raise
            log.exception("audit event %s could not be written", kind)
            self.ops.create(**row)

    def _audit(self, kind: str, actor: Actor | str, *, strict: bool, **fields: Any) -> None:
        """Append an audit event. ``strict`` events guard an action: their failure raises
        AuditError (fail closed); the others are logged when they cannot be written."""
        who = actor.user_id if isinstance(actor, Actor) else actor
        try:
            self.audit.append(kind, actor=who, **fields)
        except AuditError:
            if strict:
                raise
            log.exception("audit event %s could not be written", kind)

    def _refuse(
        self, op_id: str, actor: Actor, text: str, state: OpState, message: str, command: str = ""
    ) -> Reply:
        kind = "command.rejected" if state == OpState.REJECTED else "command.refused"
        self._log(
            op_id,
            actor,
            text,
            state,
            kind=kind,
            strict=False,
            command=command,
            data={"why": message},
            error=self.redact(message)[:1000],
        )
        return Reply(text=message, ok=False, op_id=op_id)

    def _submit(self, op_id: str, actor: Actor, text: str, responder: Responder) -> Reply:
        try:
            parsed = parse(text, self.registry)
        except UserError as err:
            log.info("rejected command from %s: %s", actor.user_id, err.message)
            return self._refuse(op_id, actor, text, OpState.REJECTED, usage_reply(err))
        spec = parsed.spec
        refusal = self.policy.refusal(actor, spec)
        if refusal:
            return self._refuse(
                op_id, actor, text, OpState.REFUSED, f":no_entry: {refusal}", spec.name
            )
        ctx = self.context(actor, op_id, responder)
        try:
            plan = spec.plan(parsed.args, ctx)
        except UserError as err:
            return self._refuse(op_id, actor, text, OpState.REJECTED, usage_reply(err), spec.name)
        if parsed.dry_run:
            self._log(
                op_id,
                actor,
                text,
                OpState.DRY_RUN,
                kind="command.dry_run",
                strict=False,
                command=spec.name,
                data={"plan": plan.digest()},
            )
            return Reply(text=f"*Dry run*, nothing was done:\n{plan.as_text()}", op_id=op_id)
        if self.requests.policy.needs_approval(spec.name, spec.destructive):
            return self._request_approval(op_id, actor, text, parsed, plan)
        if spec.immediate and spec.readonly:
            return self._answer(op_id, actor, text, spec, plan, ctx)
        first = OpState.RUNNING if spec.immediate else OpState.QUEUED
        try:
            self._log(
                op_id, actor, text, first, kind="command.received", strict=True, command=spec.name
            )
        except AuditError as err:
            return self._refuse(
                op_id, actor, text, OpState.REFUSED, AUDIT_DOWN.format(why=err), spec.name
            )
        if spec.immediate:
            result = self._execute(spec, plan, ctx, lambda _line: None)
            final = OpState.SUCCEEDED if result.ok else OpState.FAILED
            observability.COMMANDS.labels(spec.name, final.value).inc()
            self.ops.transition(
                op_id, [OpState.RUNNING], final, result_summary=self.redact(result.title)[:1000]
            )
            future = ctx.followups[0] if ctx.followups else None
            return Reply(
                text=result.text or result.title,
                ok=result.ok,
                op_id=op_id,
                result=result,
                future=future,
            )
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

    def _answer(
        self, op_id: str, actor: Actor, text: str, spec: CommandSpec, plan: Plan, ctx: RunContext
    ) -> Reply:
        """Answer a read-only command at once; record it (operation and audit event in one
        write) before the answer is shown, or show nothing."""
        result = self._execute(spec, plan, ctx, lambda _line: None)
        state = OpState.SUCCEEDED if result.ok else OpState.FAILED
        try:
            self._log(
                op_id,
                actor,
                text,
                state,
                kind="command.answered",
                strict=True,
                command=spec.name,
                data={"ok": result.ok},
                result_summary=self.redact(result.title)[:1000],
            )
        except AuditError as err:
            return Reply(text=AUDIT_DOWN.format(why=err), ok=False, op_id=op_id)
        return Reply(text=result.text or result.title, ok=result.ok, op_id=op_id, result=result)

    # --- approvals --------------------------------------------------------------------------
    def _request_approval(
        self, op_id: str, actor: Actor, text: str, parsed: Parsed, plan: Plan
    ) -> Reply:
        spec = parsed.spec
        if not parsed.reason or not parsed.reason.strip():
            return self._refuse(
                op_id,
                actor,
                text,
                OpState.REJECTED,
                usage_reply(
                    UserError(
                        f"`{spec.name}` needs a second person, and a reason "
                        'they can judge it by: add --reason "...".',
                        usage=spec.usage,
                    )
                ),
                spec.name,
            )
        reason = self.redact(parsed.reason.strip())
        safe_text = self.redact(text)[:2000]
        try:
            self._log(
                op_id,
                actor,
                text,
                OpState.AWAITING_APPROVAL,
                kind="command.received",
                strict=True,
                command=spec.name,
                data={"reason": reason},
            )
        except AuditError as err:
            return self._refuse(
                op_id, actor, text, OpState.REFUSED, AUDIT_DOWN.format(why=err), spec.name
            )
        request = self.requests.create(
            actor=actor,
            op_id=op_id,
            command=spec.name,
            text=safe_text,
            args=parsed.args,
            plan_digest=plan.digest(),
            plan_text=self.redact(plan.as_text()),
            reason=reason,
        )
        self.ops.set_fields(op_id, request_id=request.id)
        self._audit(
            "request.created",
            actor,
            strict=False,
            op_id=op_id,
            request_id=request.id,
            command=spec.name,
            data={
                "plan": plan.digest(),
                "reason": reason,
                "expires_at": request.expires_at.isoformat(),
            },
        )
        try:
            card = self.cards.post(request)
        except Exception:
            log.exception("could not post the approval card")
            card = None
        if card:
            self.requests.set_card(request.id, card[0], card[1])
        minutes = self.requests.policy.ttl.total_seconds() / 60
        return Reply(
            text=(
                f":lock: `{spec.name}` needs a second person. Request *{request.id}* waits "
                f"for an approver for {minutes:.0f} minutes.\n{request.plan_text}"
            ),
            op_id=op_id,
        )

    def decide(self, verb: str, ctx: Any, request_id: str) -> Result:
        """Approve, deny or cancel a request for ``ctx.actor``. An approval that completes the
        request schedules the action on the pool (``ctx.followups`` gets its future)."""
        actor: Actor = ctx.actor
        deciders: dict[str, Callable[[Actor, str], Decision]] = {
            "approve": self.requests.approve,
            "deny": self.requests.deny,
            "cancel": self.requests.cancel,
        }
        decision = deciders[verb](actor, request_id)
        request = decision.request
        kind = {
            "approve": "request.approved",
            "deny": "request.denied",
            "cancel": "request.cancelled",
        }[verb]
        if request is not None and request.state == ReqState.EXPIRED and decision.changed:
            kind = "request.expired"
        self._audit(
            kind if decision.ok or decision.changed else "refusal",
            actor,
            strict=False,
            op_id=request.op_id if request else "",
            request_id=request_id,
            command=request.command if request else "",
            data={"verb": verb, "outcome": decision.message},
        )
        if request is not None and decision.changed:
            observability.APPROVALS.labels(str(request.state)).inc()
            created = request.created_at
            if created.tzinfo is None:
                created = created.replace(tzinfo=dt.UTC)
            observability.APPROVAL_LATENCY.observe((utcnow() - created).total_seconds())
            if request.state in (ReqState.DENIED, ReqState.CANCELLED, ReqState.EXPIRED):
                self.ops.transition(
                    request.op_id,
                    [OpState.AWAITING_APPROVAL],
                    OpState.CANCELLED,
                    error=f"request {request.state}",
                )
            self._safe(self.cards.update, request)
            if verb != "cancel":
                self._safe(
                    self.cards.tell,
                    request,
                    f"Your request {request.id} (`{request.command}`): {decision.message}",
                )
        if decision.run and request is not None:
            responder = self.cards.responder(request) or ctx.responder
            try:
                ctx.followups.append(
                    self.pool.submit(lambda: self.run_request(request.id, responder))
                )
            except BusyError:
                self.requests.move(
                    request.id,
                    [ReqState.APPROVED],
                    ReqState.FAILED,
                    outcome="hq-bot was too busy to start it",
                )
                return Result(
                    ok=False,
                    title="Approved, but hq-bot is too busy to start it; "
                    "nothing was run. Ask again in a minute.",
                )
            return Result(ok=True, title=f"{decision.message} Running `{request.command}` now.")
        return Result(ok=decision.ok, title=decision.message)

    def run_request(self, request_id: str, responder: Responder | None) -> Result:
        """Run an approved request exactly once: approved -> running is a compare-and-set.
        The plan is made again first; if it changed since the request, nothing runs."""
        if not self.requests.move(request_id, [ReqState.APPROVED], ReqState.RUNNING):
            return Result(ok=False, title=f"{request_id} is not waiting to run.")
        request = self.requests.get(request_id)
        assert request is not None
        op_id = request.op_id
        token = logs.operation_id.set(op_id)
        actor = Actor(
            user_id=request.requester_id,
            user_name=request.requester_name,
            channel_id=request.channel_id,
            source=request.source,
        )
        try:
            self.ops.transition(op_id, [OpState.AWAITING_APPROVAL], OpState.RUNNING)
            with self._running_lock:
                self._running.add(op_id)
            spec = self.registry.get(request.command)
            ctx = self.context(actor, op_id, responder)
            try:
                if spec is None:
                    raise UserError(f"`{request.command}` is no longer a command.")
                plan = spec.plan(json.loads(request.args_json), ctx)
            except UserError as err:
                return self._finish_request(
                    request,
                    responder,
                    Result(
                        ok=False,
                        title=f"Nothing was run: the plan could not be made again "
                        f"({err.message}). Ask again.",
                    ),
                    ran=False,
                )
            if plan.digest() != request.plan_digest:
                return self._finish_request(
                    request,
                    responder,
                    Result(
                        ok=False,
                        title="Nothing was run: the plan changed since the request "
                        f"was made.\nNow it would be:\n{plan.as_text()}\nAsk again.",
                    ),
                    ran=False,
                )
            try:
                self._audit(
                    "execution.started",
                    "system",
                    strict=True,
                    op_id=op_id,
                    request_id=request_id,
                    command=spec.name,
                    data={"plan": plan.digest(), "approved_by": request.decided_by},
                )
            except AuditError as err:
                return self._finish_request(
                    request,
                    responder,
                    Result(ok=False, title=AUDIT_DOWN.format(why=err)),
                    ran=False,
                )
            if responder is not None:
                self._safe(responder.started, op_id, f"`{spec.name}`: {plan.summary}")
            result = self._execute(spec, plan, ctx, self._progress(op_id, responder, spec.name))
            return self._finish_request(request, responder, result, ran=True)
        finally:
            with self._running_lock:
                self._running.discard(op_id)
            logs.operation_id.reset(token)

    def _finish_request(
        self, request: ApprovalRequest, responder: Responder | None, result: Result, ran: bool
    ) -> Result:
        state = ReqState.SUCCEEDED if result.ok else ReqState.FAILED
        observability.COMMANDS.labels(request.command, state.value).inc()
        summary = self.redact(result.title)[:1000]
        self.requests.move(
            request.id, [ReqState.RUNNING], state, outcome=summary, finished_at=utcnow()
        )
        self.ops.transition(
            request.op_id,
            [OpState.RUNNING, OpState.AWAITING_APPROVAL],
            OpState.SUCCEEDED if result.ok else OpState.FAILED,
            result_summary=summary,
            error="" if result.ok else summary,
        )
        self._audit(
            "result",
            "system",
            strict=False,
            op_id=request.op_id,
            request_id=request.id,
            command=request.command,
            data={"ok": result.ok, "ran": ran, "summary": summary},
        )
        current = self.requests.get(request.id) or request
        self._safe(self.cards.update, current)
        if responder is not None:
            if not ran:
                self._safe(responder.started, request.op_id, f"`{request.command}`")
            self._safe(responder.finished, request.op_id, result)
        verdict = "succeeded" if result.ok else "failed"
        self._safe(
            self.cards.tell,
            current,
            f"Your request {request.id} (`{request.command}`) {verdict}: {summary}",
        )
        return result

    def expire_due(self) -> list[ApprovalRequest]:
        """Expire overdue requests, update their cards and tell their requesters."""
        expired = self.requests.expire_due()
        for request in expired:
            self.ops.transition(
                request.op_id,
                [OpState.AWAITING_APPROVAL],
                OpState.CANCELLED,
                error="request expired",
            )
            self._audit(
                "request.expired",
                "system",
                strict=False,
                op_id=request.op_id,
                request_id=request.id,
                command=request.command,
            )
            self._safe(self.cards.update, request)
            self._safe(
                self.cards.tell,
                request,
                f"Your request {request.id} (`{request.command}`) expired unapproved.",
            )
        return expired

    def pending_result(self) -> Result:
        self.expire_due()
        rows = []
        for request in self.requests.pending():
            rows.append(
                Row(
                    name=f"{request.id} `{request.command}`",
                    status=Status.WARN,
                    detail=f"by <@{request.requester_id}>, reason: {request.reason}; expires "
                    f"{request.expires_at:%H:%M} UTC",
                )
            )
        title = f"{len(rows)} request(s) waiting for approval" if rows else "Nothing is waiting."
        return Result(ok=True, title=title, rows=tuple(rows))

    def audit_result(self, limit: int, user: str | None, command: str | None) -> Result:
        events = self.audit.recent(limit=limit, user=user, command=command)
        lines = [
            f"`#{e.seq}` {e.at:%Y-%m-%d %H:%M:%S} *{e.kind}* {e.actor} {e.command} "
            f"{e.request_id or e.op_id}".rstrip()
            for e in events
        ]
        return Result(ok=True, title=f"Last {len(lines)} audit event(s)", text="\n".join(lines))

    def schedule_result(self) -> Result:
        if self.scheduler is None:
            return Result(ok=False, title="No scheduler in this process.")
        nexts = self.scheduler.next_runs()
        lasts = self.scheduler.last_runs()
        rows = []
        for name, job in self.scheduler.jobs.items():
            last = lasts.get(name)
            when = nexts.get(name)
            detail = (
                f"`{job.cron}` {job.summary}; next {when:%Y-%m-%d %H:%M:%S} UTC" if when else ""
            )
            status = Status.UNKNOWN
            if last is not None:
                outcome = "running" if last.ok is None else ("ok" if last.ok else "FAILED")
                detail += f"; last {last.due_at:%Y-%m-%d %H:%M} {outcome}: {last.summary[:120]}"
                status = (
                    Status.OK if last.ok else (Status.UNKNOWN if last.ok is None else Status.FAIL)
                )
            rows.append(Row(name, status, detail))
        leader = "this replica leads" if self.scheduler.leading else "another replica leads"
        if not self.settings.hq_scheduler_enabled:
            leader = "the scheduler is off (HQ_SCHEDULER_ENABLED)"
        return Result(ok=True, title=f"{len(rows)} scheduled jobs ({leader})", rows=tuple(rows))

    def audit_verify_result(self) -> Result:
        check = self.audit.verify()
        if check.ok:
            return Result(
                ok=True, title=f"Audit trail verified: {check.checked} rows, chain intact."
            )
        return Result(
            ok=False, title=f"Audit trail BROKEN at row {check.first_bad_seq}: {check.reason}"
        )

    # --- running ----------------------------------------------------------------------------
    def context(self, actor: Actor, op_id: str, responder: Responder | None = None) -> RunContext:
        return RunContext(
            settings=self.settings,
            actor=actor,
            operation_id=op_id,
            infra=self.infra,
            governance=self,
            registry=self.registry,
            responder=responder,
        )

    def _progress(
        self, op_id: str, responder: Responder | None, command: str
    ) -> Callable[[str], None]:
        def progress(line: str) -> None:
            line = self.redact(line)
            self._audit(
                "step",
                "system",
                strict=False,
                op_id=op_id,
                command=command,
                data={"step": line[:500]},
            )
            if responder is not None:
                self._safe(responder.progress, op_id, line)

        return progress

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
            result = self._execute(spec, plan, ctx, self._progress(op_id, responder, spec.name))
            state = OpState.SUCCEEDED if result.ok else OpState.FAILED
            observability.COMMANDS.labels(spec.name, state.value).inc()
            summary = self.redact(result.title)[:1000]
            self.ops.transition(
                op_id,
                [OpState.RUNNING],
                state,
                result_summary=summary,
                error="" if result.ok else summary,
            )
            self._audit(
                "result",
                ctx.actor,
                strict=False,
                op_id=op_id,
                command=spec.name,
                data={"ok": result.ok, "summary": summary},
            )
            self._safe(responder.finished, op_id, result)
            return result
        finally:
            with self._running_lock:
                self._running.discard(op_id)
            logs.operation_id.reset(token)

    def _safe(self, fn: Callable[..., None], *args: Any) -> None:
        """Call a reporting function; a failed Slack call is logged, never fatal to the work."""
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
    def recover(self) -> list[str]:
        """Mark work that a dead process left running as interrupted, and say so in the ops
        channel. Return the interrupted operation ids."""
        interrupted = []
        for op in self.ops.claim_orphans():
            interrupted.append(op.id)
            self._close_catalogue_rows(op.id)
            request = self.requests.by_op(op.id)
            if request is not None:
                self.requests.move(
                    request.id,
                    [ReqState.RUNNING, ReqState.APPROVED],
                    ReqState.INTERRUPTED,
                    finished_at=utcnow(),
                    outcome="interrupted: hq-bot stopped while it ran",
                )
                self._safe(self.cards.update, self.requests.get(request.id) or request)
            self._audit(
                "interrupted",
                "system",
                strict=False,
                op_id=op.id,
                command=op.command,
                data={"started_at": str(op.started_at)},
            )
            self._safe(
                self.cards.announce,
                f":warning: Operation {op.id} (`/hq {op.text}` by <@{op.user_id}>) was "
                "interrupted: hq-bot stopped while it was running. Check the deployment "
                "(`/hq health`) before you run it again.",
            )
        return interrupted

    def _close_catalogue_rows(self, op_id: str) -> None:
        """A backup or mirror that an interrupted operation left "running" can never finish:
        mark it failed so that nothing mistakes it for a good one."""
        note = "interrupted: hq-bot stopped while it ran"
        with self.sessions.begin() as session:
            session.execute(
                update(Backup)
                .where(Backup.op_id == op_id, Backup.state == "running")
                .values(state="failed", error=note, finished_at=utcnow())
            )
            session.execute(
                update(MirrorRun)
                .where(MirrorRun.op_id == op_id, MirrorRun.state == "running")
                .values(state="failed", detail=note, finished_at=utcnow())
            )

    def start_background(self) -> None:
        """Heartbeats for running work and the expiry sweep of pending requests."""

        def loop() -> None:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                with self._running_lock:
                    running = list(self._running)
                try:
                    self.ops.heartbeat(running)
                    self.expire_due()
                except Exception:
                    log.exception("background upkeep failed")

        threading.Thread(target=loop, name="hq-upkeep", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.pool.shutdown(wait=True)
        if self.infra is not None and hasattr(self.infra, "close"):
            self.infra.close()
        if self.engine is not None:
            self.engine.dispose()
