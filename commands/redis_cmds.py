"""``/hq redis memory``: Redis memory use against ``maxmemory`` (guide: Redis Pub/Sub Capacity)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from commands.health import human_bytes
from commands.infra.redis_client import RedisMemory
from commands.spec import CommandSpec, Context, Plan, Progress, Result, Row, Status, Step


def redis_memory_row(memory: RedisMemory, threshold: float, name: str = "redis memory") -> Row:
    """Given Redis's memory figures and the alert percentage, return the row: WARN at or above
    the threshold, UNKNOWN when maxmemory is 0 (no limit, so no percentage to judge)."""
    used = memory.used_human or human_bytes(memory.used)
    policy = f", policy {memory.policy}" if memory.policy else ""
    percent = memory.percent
    if percent is None:
        return Row(
            name,
            Status.UNKNOWN,
            f"{used} used; maxmemory is 0, which means no limit: Redis grows until the host "
            f"runs out of memory (the guide runs it with --maxmemory 256mb){policy}",
        )
    detail = (
        f"{used} of {human_bytes(memory.maxmemory)} ({percent:.1f} %){policy}; "
        f"alert above {threshold:g} %"
    )
    if percent >= threshold:
        detail += ": raise maxmemory (`/hq redis maxmemory SIZE`) or find what fills it"
        return Row(name, Status.WARN, detail)
    return Row(name, Status.OK, detail)


def _plan(args: Mapping[str, Any], ctx: Context) -> Plan:
    return Plan(
        command="redis memory",
        summary="read Redis memory use against maxmemory",
        steps=(Step("INFO memory"),),
        data={"threshold": float(ctx.settings.hq_alert_redis_memory_percent)},
    )


def _execute(plan: Plan, ctx: Context, progress: Progress) -> Result:
    memory = ctx.infra.redis.memory()
    row = redis_memory_row(memory, float(plan.data["threshold"]))
    if row.status == Status.WARN:
        title = f"Redis memory is above {plan.data['threshold']:g} % of maxmemory"
    elif memory.percent is None:
        title = f"Redis uses {memory.used_human or human_bytes(memory.used)} (no maxmemory limit)"
    else:
        title = f"Redis uses {memory.percent:.1f} % of maxmemory"
    return Result(
        ok=True,
        title=title,
        rows=(row,),
        data={"used": memory.used, "maxmemory": memory.maxmemory, "policy": memory.policy},
    )


SPECS = (
    CommandSpec(
        name="redis memory",
        summary="Show Redis memory use against maxmemory (warns at 80 %).",
        plan=_plan,
        execute=_execute,
        section="Redis",
    ),
)
