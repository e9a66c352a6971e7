"""Infrastructure clients, built lazily from settings and handed to commands."""

from __future__ import annotations

import threading
from typing import Any


class Infra:
    """Lazily created clients of the deployment (compose, Docker Engine, PostgreSQL, Redis,
    S3, HTTP, the .env file). A command asks only for what it uses."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._made: dict[str, Any] = {}
