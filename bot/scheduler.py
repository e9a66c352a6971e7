"""Scheduled jobs: nightly backup and retention, the weekly MinIO mirror, the health digest,
metric alerts and TLS expiry.

Any number of replicas may run; one leads (a PostgreSQL advisory lock held on a connection of
its own, or a lock file beside a SQLite database) and only the leader runs jobs. Every run is
also claimed in ``job_runs`` by (job, due time), so even two replicas that both believe they
lead for a moment run a due job once. Fire times come from APScheduler's cron triggers; the loop
that waits for them is ours, because the exact due time is the once-only key.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from approvals.models import JobRun, OpState, utcnow
from approvals.operations import OWNER
from bot.cron import trigger
from commands.spec import Result

log = logging.getLogger(__name__)
LEADER_LOCK = 0x68712D6C65616400  # "hq-lead\0"

JobFn = Callable[[Any, dt.datetime], Result]


@dataclass(frozen=True)
class Job:
    """A scheduled job: its name, cron, what it does, and the function that does it."""

    name: str
    cron: str
    summary: str
    run: JobFn


class Leadership:
    """Who runs the jobs. ``held()`` tries to take the lead and says whether we have it; the
    lead is kept until the process dies or its lock connection breaks."""

    def __init__(self, database_url: str) -> None:
        self.url = make_url(database_url)
        self._conn: psycopg.Connection[Any] | None = None
        self._file: Any = None

    def held(self) -> bool:
        try:
            if self.url.get_backend_name() == "postgresql":
                return self._postgres()
            return self._lock_file()
        except Exception:
            log.exception("leadership check failed")
            self.release()
            return False

    def _postgres(self) -> bool:
        if self._conn is not None:
            self._conn.execute("SELECT 1")  # still connected: still holding
            return True
        url = self.url.set(drivername="postgresql")
        conn = psycopg.connect(
            url.render_as_string(hide_password=False), autocommit=True, connect_timeout=5
        )
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
        if got and got[0]:
            self._conn = conn
            return True
        conn.close()
        return False

    def _lock_file(self) -> bool:
        if self._file is not None:
            return True
        database = self.url.database or "hq-bot.db"
        path = Path(f"{database}.leader") if database != ":memory:" else None
        if path is None:
            return True
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("closing the leader connection failed", exc_info=True)
            self._conn = None
        if self._file is not None:
            self._file.close()
            self._file = None


class Scheduler:
    """Runs due jobs while this replica leads. ``run_job`` runs one now (``hq-bot run-job``)."""

    def __init__(
        self,
        bot: Any,
        jobs: Mapping[str, Job],
        leadership: Leadership,
        *,
        poll: float = 10.0,
        timezone: str = "UTC",
    ) -> None:
        self.bot = bot
        self.jobs = dict(jobs)
        self.leadership = leadership
        self.poll = poll
        self.triggers = {name: trigger(job.cron, timezone) for name, job in self.jobs.items()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.leading = False

    # --- running -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hq-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.leadership.release()

    def _loop(self) -> None:
        now = utcnow()
        upcoming = {name: self._next(name, now) for name in self.jobs}
        while not self._stop.is_set():
            was = self.leading
            self.leading = self.leadership.held()
            if self.leading != was:
                log.info("scheduler %s the lead", "took" if self.leading else "lost")
                # A new leader starts from now: what was due before belonged to the old one.
                now = utcnow()
                upcoming = {name: self._next(name, now) for name in self.jobs}
            now = utcnow()
            for name, due in list(upcoming.items()):
                if due is not None and due <= now:
                    if self.leading:
                        self._run_safely(name, due)
                    upcoming[name] = self._next(name, due)
            soonest = min((d for d in upcoming.values() if d is not None), default=None)
            wait = self.poll
            if soonest is not None:
                wait = min(wait, max((soonest - utcnow()).total_seconds(), 0.05))
            self._stop.wait(wait)

    def _next(self, name: str, after: dt.datetime) -> dt.datetime | None:
        fire = self.triggers[name].get_next_fire_time(None, after + dt.timedelta(microseconds=1))
        return fire.astimezone(dt.UTC) if fire is not None else None

    def _run_safely(self, name: str, due: dt.datetime) -> None:
        try:
            self.run_job(name, due)
        except Exception:
            log.exception("job %s failed", name)

    def run_job(self, name: str, due: dt.datetime | None = None) -> Result:
        """Run job ``name`` for ``due`` (default: now), once: a second claim of the same due
        time is refused. Return its result."""
        job = self.jobs[name]
        due = (due or utcnow()).replace(microsecond=0)
        sessions = self.bot.sessions
        try:
            with sessions.begin() as session:
                session.add(JobRun(job=name, due_at=due, runner=OWNER, started_at=utcnow()))
        except IntegrityError:
            log.info("job %s due %s already claimed", name, due.isoformat())
            return Result(ok=True, title=f"{name} for {due:%H:%M:%S} already ran elsewhere.")
        # The run itself is an operation too (the commands it runs are operations of their
        # own), so `/hq audit` and the operations table show every scheduled run.
        op_id = self.bot.ops.create(
            source="scheduler",
            user_id="scheduler",
            user_name="scheduler",
            channel_id=self.bot.settings.hq_ops_channel,
            text=f"job {name} due {due.isoformat()}",
            state=OpState.RUNNING,
            command=f"job {name}",
            started_at=utcnow(),
        )
        with self.bot._running_lock:
            self.bot._running.add(op_id)  # heartbeats keep other replicas from claiming it
        try:
            result = job.run(self.bot, due)
        except Exception:
            log.exception("job %s failed", name)
            result = Result(
                ok=False,
                title=f"Scheduled job `{name}` failed unexpectedly; the "
                f"details are in hq-bot's log (operation {op_id}).",
            )
            self.bot._safe(self.bot.cards.post_result, result, f"Scheduled job `{name}`")
        finally:
            with self.bot._running_lock:
                self.bot._running.discard(op_id)
        summary = self.bot.redact(result.title)[:1000]
        self.bot.ops.transition(
            op_id,
            [OpState.RUNNING],
            OpState.SUCCEEDED if result.ok else OpState.FAILED,
            result_summary=summary,
            error="" if result.ok else summary,
        )
        with sessions.begin() as session:
            session.execute(
                update(JobRun)
                .where(JobRun.job == name, JobRun.due_at == due)
                .values(finished_at=utcnow(), ok=result.ok, summary=summary, op_id=op_id)
            )
        return result

    # --- reading -----------------------------------------------------------------------------
    def last_runs(self) -> dict[str, JobRun]:
        sessions = self.bot.sessions
        last: dict[str, JobRun] = {}
        with sessions() as session:
            for name in self.jobs:
                row = session.scalars(
                    select(JobRun).where(JobRun.job == name).order_by(JobRun.due_at.desc()).limit(1)
                ).first()
                if row is not None:
                    last[name] = row
        return last

    def next_runs(self) -> dict[str, dt.datetime | None]:
        now = utcnow()
        return {name: self._next(name, now) for name in self.jobs}
