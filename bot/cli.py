"""``hq-bot``: serve (HTTP or Socket Mode), console, and admin commands."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from bot import logs
from bot.settings import Settings, SettingsError, load_settings

log = logging.getLogger("hq-bot")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hq-bot", description=__doc__)
    parser.add_argument("--env-file", help="read settings from this file too (KEY=VALUE lines)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve Slack: Socket Mode, or HTTP with --http")
    serve.add_argument("--http", action="store_true", help="serve POST /slack/events over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)

    console = sub.add_parser("console", help="read /hq commands from stdin")
    console.add_argument("--user", default="console", help="acting user name or Slack ID")

    db = sub.add_parser("db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply pending migrations")

    job = sub.add_parser("run-job", help="run one scheduled job now and post its result")
    job.add_argument("name", help="backup, minio, digest, metrics or tls")

    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_sub.add_parser("verify", help="check the hash chain; exit 1 naming the first bad row")
    export = audit_sub.add_parser("export", help="write every audit row to stdout")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    return parser


def cmd_db_upgrade(settings: Settings) -> int:
    from approvals.db import make_engine, upgrade

    engine = make_engine(settings.hq_database_url)
    upgrade(engine)
    engine.dispose()
    print("database is up to date")
    return 0


def make_bot(settings: Settings, *, slack: bool) -> Any:
    """Given settings, return a bot with its infra, scheduler and (when Slack is configured
    and wanted) Slack cards; otherwise cards that print or log."""
    from bot.cards import ConsoleCards, SlackCards
    from bot.core import Bot
    from bot.jobs import build_jobs
    from bot.scheduler import Leadership, Scheduler
    from bot.slack import group_resolver, web_client
    from commands.infra import Infra

    client = web_client(settings) if slack else None
    resolver = group_resolver(client) if client is not None else None
    bot = Bot.create(settings, infra=Infra(settings), resolve_group=resolver)
    bot.cards = (
        SlackCards(client, settings.hq_ops_channel)
        if client is not None
        else ConsoleCards(sys.stdout)
    )
    bot.scheduler = Scheduler(
        bot,
        build_jobs(settings),
        Leadership(settings.hq_database_url),
        poll=settings.hq_leader_poll_seconds,
        timezone=settings.hq_schedule_timezone,
    )
    bot.slack_client = client
    return bot


def cmd_run_job(settings: Settings, name: str) -> int:
    bot = make_bot(settings, slack=settings.slack_bot_token is not None)
    try:
        if name not in bot.scheduler.jobs:
            print(
                f"hq-bot: no job {name!r}; jobs: {', '.join(bot.scheduler.jobs)}", file=sys.stderr
            )
            return 2
        result = bot.scheduler.run_job(name)
        from bot import render

        print(render.text(result))
        return 0 if result.ok else 1
    finally:
        bot.close()


def cmd_audit(settings: Settings, what: str, fmt: str) -> int:
    from approvals.audit import AuditTrail, load_key
    from approvals.db import make_engine, upgrade

    engine = make_engine(settings.hq_database_url)
    upgrade(engine)
    trail = AuditTrail(engine, load_key(settings))
    try:
        if what == "export":
            count = trail.export(fmt, sys.stdout)  # type: ignore[arg-type]
            print(f"exported {count} audit rows", file=sys.stderr)
            return 0
        check = trail.verify()
        if check.ok:
            print(f"audit trail verified: {check.checked} rows, chain intact")
            return 0
        print(f"audit trail BROKEN at row {check.first_bad_seq}: {check.reason}")
        return 1
    finally:
        engine.dispose()


def cmd_console(settings: Settings, user: str) -> int:
    from bot import console

    bot = make_bot(settings, slack=False)
    bot.recover()
    try:
        return console.main(bot, user)
    finally:
        bot.close()


def cmd_serve(settings: Settings, http: bool, host: str, port: int) -> int:
    from bot import observability
    from bot.slack import HttpServer, build_app, health_route

    if settings.slack_bot_token is None:
        raise SettingsError("SLACK_BOT_TOKEN: required to serve Slack (xoxb-...)")
    if http and settings.slack_signing_secret is None:
        raise SettingsError("SLACK_SIGNING_SECRET: required by serve --http")
    if not http and settings.slack_app_token is None:
        raise SettingsError("SLACK_APP_TOKEN: required for Socket Mode (xapp-...); or use --http")
    bot = make_bot(settings, slack=True)
    client = bot.slack_client
    bot.recover()
    bot.start_background()
    if settings.hq_scheduler_enabled:
        bot.scheduler.start()
    routes = {"/healthz": health_route(bot, client), "/metrics": observability.exposition}
    secret = settings.slack_signing_secret.get_secret_value() if http else None  # type: ignore[union-attr]
    app = build_app(bot, client, secret)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if http:
        server = HttpServer((host, port), app, routes)
        thread = threading.Thread(target=server.serve_forever, name="hq-http", daemon=True)
        thread.start()
        log.info("serving HTTP on %s:%d", host, server.server_address[1])
        print(f"hq-bot listening on http://{host}:{server.server_address[1]}", flush=True)
        stop.wait()
        server.shutdown()
    else:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        handler = SocketModeHandler(app, settings.slack_app_token.get_secret_value())  # type: ignore[union-attr]
        handler.connect()  # type: ignore[no-untyped-call]
        if settings.hq_metrics_port:
            side = HttpServer(("127.0.0.1", settings.hq_metrics_port), app, routes)
            threading.Thread(target=side.serve_forever, name="hq-metrics", daemon=True).start()
        log.info("connected over Socket Mode")
        print("hq-bot connected over Socket Mode", flush=True)
        stop.wait()
        handler.close()  # type: ignore[no-untyped-call]
    bot.scheduler.stop()
    bot.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.env_file)
    except SettingsError as err:
        print(f"hq-bot: {err}", file=sys.stderr)
        return 2
    logs.setup(settings.hq_log_level)
    try:
        if args.command == "db":
            return cmd_db_upgrade(settings)
        if args.command == "run-job":
            return cmd_run_job(settings, args.name)
        if args.command == "audit":
            return cmd_audit(settings, args.audit_command, getattr(args, "format", "jsonl"))
        if args.command == "console":
            return cmd_console(settings, args.user)
        return cmd_serve(settings, args.http, args.host, args.port)
    except SettingsError as err:
        print(f"hq-bot: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
