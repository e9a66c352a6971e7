"""A command context for unit tests of plan and execute steps: settings and infra as given, a
test actor and operation id, no governance and an empty registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from commands.spec import Actor


@dataclass
class Ctx:
    settings: Any
    infra: Any = None
    actor: Actor = field(default_factory=lambda: Actor("U0TEST"))
    operation_id: str = "op-test"
    governance: Any = None
    registry: Any = field(default_factory=dict)
