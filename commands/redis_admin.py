"""Destructive Redis actions from the runbook: ``/hq redis flushdb`` (the forced logout of
every user, Secret Rotation step 4). Needs a second person by default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from commands.infra.gateway import InfraError
from commands.spec import CommandSpec, Context, Plan, Progress, Result, Role, Step


def _target(ctx: Context) -> str:
    url = str(ctx.settings.hq_redis_url)
    host = url.split("@")[-1]  # never show credentials of the URL
    return host.removeprefix("redis://").removeprefix("rediss://")


def plan_flushdb(args: Mapping[str, Any], ctx: Context) -> Plan:
    """Given the settings, return the plan: FLUSHDB on the deployment's session database.
    The key count is not part of the plan (it changes every second); the result reports it."""
    target = _target(ctx)
    service = ctx.settings.hq_service_redis
    return Plan(
        command="redis flushdb",
        summary=f"FLUSHDB on Redis {target} (service `{service}`): deletes every key of that "
        "database, so every user is logged out at once.",
        steps=(
            Step("count the keys (DBSIZE)"),
            Step("FLUSHDB", ("redis-cli", "FLUSHDB")),
            Step("check the database is empty (DBSIZE)"),
        ),
        targets=(f"redis:{target}",),
        data={"target": target},
    )


def execute_flushdb(plan: Plan, ctx: Context, progress: Progress) -> Result:
    client = ctx.infra.redis.client
    try:
        before = int(client.dbsize())
        progress(f"{before} keys before FLUSHDB")
        client.flushdb()
        after = int(client.dbsize())
    except redis.RedisError as exc:
        raise InfraError(
            f"Redis at {plan.data['target']} failed during FLUSHDB ({type(exc).__name__})."
        ) from exc
    progress(f"FLUSHDB done; {after} keys now")
    return Result(
        ok=after == 0 or after < before,
        title=f"Redis FLUSHDB done: {before} keys removed; every session is gone, users log "
        "in again.",
        data={"before": before, "after": after},
    )


SPECS = (
    CommandSpec(
        name="redis flushdb",
        summary="Delete every key in the Redis session database: logs every user out.",
        plan=plan_flushdb,
        execute=execute_flushdb,
        destructive=True,
        roles=frozenset({Role.OPERATOR}),
        section="Redis",
    ),
)
