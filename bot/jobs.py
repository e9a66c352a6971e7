"""The scheduled jobs, with defaults from the guide: the daily database backup at 02:00 then
retention, the weekly MinIO mirror (Sunday 03:00), a daily health digest, the metrics evaluation
every minute and the daily TLS expiry check. Runbook jobs go down the same path as a person's
command (``Bot.submit``, actor ``scheduler``), so they are recorded and audited the same way."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from bot import observability
from bot.alerts import Alerts, describe, read_metrics, rules_from_settings
from bot.scheduler import Job
from commands.spec import Actor, Result, Row, Status

log = logging.getLogger(__name__)


class JobReporter:
    """A responder for scheduled work: stays quiet while it runs, then posts the result in
    the ops channel (failures always, successes when HQ_REPORT_JOB_SUCCESS is on)."""

    def __init__(self, bot: Any, job: str) -> None:
        self.bot = bot
        self.job = job

    def started(self, op_id: str, headline: str) -> None:
        return None

    def progress(self, op_id: str, line: str) -> None:
        return None

    def finished(self, op_id: str, result: Result) -> None:
        if result.ok and not self.bot.settings.hq_report_job_success:
            return
        self.bot.cards.post_result(result, f"Scheduled job `{self.job}`")


def scheduler_actor(bot: Any) -> Actor:
    return Actor(
        user_id="scheduler",
        user_name="scheduler",
        channel_id=bot.settings.hq_ops_channel,
        source="scheduler",
    )


def run_command(bot: Any, job: str, text: str) -> Result:
    """Run ``/hq TEXT`` as the scheduler, wait for it and return its result."""
    reporter = JobReporter(bot, job)
    reply = bot.submit(scheduler_actor(bot), text, reporter)
    if reply.future is not None:
        result: Result = reply.future.result()
    elif reply.result is not None:
        result = reply.result
        reporter.finished(reply.op_id, result)
    else:
        result = Result(ok=reply.ok, title=reply.text)
        reporter.finished(reply.op_id, result)
    return Result(
        ok=result.ok,
        title=result.title,
        text=result.text,
        rows=result.rows,
        data={**result.data, "op_id": reply.op_id},
    )


def _record_job(bot: Any, job: str, due: dt.datetime, result: Result) -> None:
    observability.JOB_RUNS.labels(job, "ok" if result.ok else "failed").inc()
    bot._audit(
        "job",
        "scheduler",
        strict=False,
        command=job,
        op_id=str(result.data.get("op_id", "")),
        data={"due": due.isoformat(), "ok": result.ok, "summary": result.title[:300]},
    )


def backup_job(bot: Any, due: dt.datetime) -> Result:
    result = run_command(bot, "backup", "backup now")
    if result.ok:
        pruned = run_command(bot, "backup", "backup prune")
        if not pruned.ok:
            result = Result(
                ok=False,
                title=f"{result.title}; retention failed: {pruned.title}",
                data=result.data,
            )
    _record_job(bot, "backup", due, result)
    return result


def minio_job(bot: Any, due: dt.datetime) -> Result:
    result = run_command(bot, "minio", "minio backup")
    _record_job(bot, "minio", due, result)
    return result


def _evaluate(bot: Any, names: list[str], job: str, due: dt.datetime) -> Result:
    rules = rules_from_settings(bot.settings)
    alerts = Alerts(bot.sessions, rules)
    readings = read_metrics(bot.infra, bot.settings, [n for n in names if n in rules])
    notices = alerts.evaluate(readings)
    for reading in readings:
        state = alerts.states().get(reading.name)
        value = {"firing": 1, "unknown": -1}.get(state.state if state else "ok", 0)
        observability.ALERT_STATE.labels(reading.name).set(value)
    for notice in notices:
        text = describe(notice)
        bot._audit(
            f"alert.{notice.kind}",
            "scheduler",
            strict=False,
            command=job,
            data={
                "alert": notice.rule.name,
                "value": notice.reading.value,
                "detail": notice.reading.detail[:200],
            },
        )
        bot._safe(bot.cards.announce, text)
    rows = tuple(
        Row(
            r.name,
            Status.UNKNOWN if r.value is None else Status.OK,
            r.detail if r.value is None else f"{r.value:.1f}",
        )
        for r in readings
    )
    result = Result(
        ok=True,
        title=f"{len(readings)} metric(s) evaluated, {len(notices)} notice(s) posted",
        rows=rows,
    )
    _record_job(bot, job, due, result)
    return result


def metrics_job(bot: Any, due: dt.datetime) -> Result:
    names = [n for n in rules_from_settings(bot.settings) if not n.startswith("TLS ")]
    return _evaluate(bot, names, "metrics", due)


def tls_job(bot: Any, due: dt.datetime) -> Result:
    names = [n for n in rules_from_settings(bot.settings) if n.startswith("TLS ")]
    return _evaluate(bot, names, "tls", due)


def digest_job(bot: Any, due: dt.datetime) -> Result:
    from bot.digest import build_digest

    result = build_digest(bot)
    bot.cards.post_result(result, "Daily digest")
    _record_job(bot, "digest", due, result)
    return result


def build_jobs(settings: Any) -> dict[str, Job]:
    """Given settings, return the jobs by name with their crons."""
    return {
        "backup": Job(
            "backup", settings.hq_schedule_backup, "database backup, then retention", backup_job
        ),
        "minio": Job("minio", settings.hq_schedule_minio, "MinIO bucket mirror", minio_job),
        "digest": Job("digest", settings.hq_schedule_digest, "health digest", digest_job),
        "metrics": Job("metrics", settings.hq_schedule_metrics, "Key Metrics alerts", metrics_job),
        "tls": Job("tls", settings.hq_schedule_tls, "TLS certificate expiry", tls_job),
    }
