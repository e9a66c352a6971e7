"""Logging as JSON lines, with the operation id and every known secret masked."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any

from commands.redact import Redactor, default_redactor

operation_id: contextvars.ContextVar[str] = contextvars.ContextVar("operation_id", default="")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, operation id, exception."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": self._redact(record.getMessage()),
        }
        op = getattr(record, "op", None) or operation_id.get()
        if op:
            entry["op"] = op
        if record.exc_info:
            entry["exc"] = self._redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "INFO", stream: Any = None) -> None:
    """Send the root logger's records to ``stream`` (stderr) as redacted JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(default_redactor()))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter that could carry request bodies stays at WARNING.
    for noisy in ("slack_bolt", "slack_sdk", "urllib3", "docker", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
