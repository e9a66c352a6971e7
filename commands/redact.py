"""Keep secrets out of chat, logs, audit rows and exceptions.

A :class:`Redactor` knows the secret values this process holds (Slack tokens, the audit key, the
deployment's ``.env`` secrets) and also masks anything shaped like a token or a password option.
A fingerprint (a SHA-256 prefix) may be shown instead of a value.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable

MASK = "[redacted]"
MIN_SECRET = 6

_PATTERNS = (
    re.compile(r"xox[abprse]-[0-9A-Za-z-]{8,}"),
    re.compile(r"xapp-[0-9A-Za-z-]{8,}"),
    # An option like --password X; not a word that merely ends so (`rotate db-password`).
    re.compile(r"(?i)((?<![\w-])--?(?:password|passwd|secret|token|key)[= ])\S+"),
    re.compile(r"(?i)((?:password|passwd|secret|token|api_key|access_key)\s*[=:]\s*)\S+"),
    re.compile(r"(?i)(postgres(?:ql)?(?:\+\w+)?://[^:/@\s]+:)[^@\s]+(@)"),
    re.compile(r"(?i)(redis://[^:/@\s]*:)[^@\s]+(@)"),
)


def fingerprint(value: str | bytes) -> str:
    """Given a secret, return the first 12 hex digits of its SHA-256: safe to show."""
    data = value.encode() if isinstance(value, str) else value
    return "sha256:" + hashlib.sha256(data).hexdigest()[:12]


class Redactor:
    """Masks known secret values and secret-shaped text. Thread-safe; secrets can be added as
    they become known (after a rotation both old and new values stay masked)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._regex: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            for secret in secrets:
                if secret and len(secret) >= MIN_SECRET:
                    self._secrets.add(secret)
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._regex = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if not text:
            return text
        regex = self._regex
        if regex is not None:
            text = regex.sub(MASK, text)
        for pattern in _PATTERNS:
            if pattern.groups == 2:
                text = pattern.sub(lambda m: m.group(1) + MASK + m.group(2), text)
            elif pattern.groups == 1:
                text = pattern.sub(lambda m: m.group(1) + MASK, text)
            else:
                text = pattern.sub(MASK, text)
        return text


_default = Redactor()


def default_redactor() -> Redactor:
    """Return the process-wide redactor (the bot adds its secrets to it at start)."""
    return _default
