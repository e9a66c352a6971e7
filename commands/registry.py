"""The explicit registry: command name -> spec. Add a module's SPECS here; nothing is
discovered by import magic."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from commands import (
    backups,
    governance,
    health,
    metrics,
    minio_backup,
    ops,
    redis_admin,
    redis_cmds,
    rotate,
    upgrade,
)
from commands import help as help_cmd
from commands.spec import CommandSpec


def build(specs: Iterable[CommandSpec]) -> dict[str, CommandSpec]:
    """Given specs, return the registry. Raise ValueError on a duplicate name."""
    registry: dict[str, CommandSpec] = {}
    for spec in specs:
        if spec.name in registry:
            raise ValueError(f"duplicate command {spec.name!r}")
        registry[spec.name] = spec
    return registry


REGISTRY: Mapping[str, CommandSpec] = build(
    [
        *help_cmd.SPECS,
        *governance.SPECS,
        *health.SPECS,
        *ops.SPECS,
        *redis_admin.SPECS,
        *redis_cmds.SPECS,
        *metrics.SPECS,
        *minio_backup.SPECS,
        *backups.SPECS,
        *rotate.SPECS,
        *upgrade.SPECS,
    ]
)
