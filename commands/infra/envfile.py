"""Read the deployment's ``.env`` (the one docker compose reads beside its compose file).

Values of keys that look secret (``*PASSWORD*``, ``*SECRET*``, ``*KEY*``, ``*TOKEN*``) are added
to the default redactor the moment they are read, so they can never reach chat or a log.
Writing the file (secret rotation) is a separate, later concern.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from commands.infra.gateway import InfraError
from commands.redact import default_redactor

SECRET_WORDS = ("PASSWORD", "SECRET", "KEY", "TOKEN")
_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s?(.*)$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def is_secret_key(key: str) -> bool:
    """Given a variable name, return True when its value must be treated as a secret."""
    upper = key.upper()
    return any(word in upper for word in SECRET_WORDS)


def _unquote_double(body: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            nxt = body[index + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def _value(raw: str) -> str:
    raw = raw.strip()
    if raw[:1] in {'"', "'"}:
        quote = raw[0]
        end = raw.find(quote, 1)
        while quote == '"' and end > 0 and raw[end - 1] == "\\":
            end = raw.find(quote, end + 1)
        if end > 0:
            body = raw[1:end]
            return _unquote_double(body) if quote == '"' else body
        return raw  # an unbalanced quote is kept as written, as compose does
    # an unquoted value ends at " #" (an inline comment)
    comment = re.search(r"\s#", raw)
    return (raw[: comment.start()] if comment else raw).strip()


def parse_env(text: str) -> dict[str, str]:
    """Given the text of a ``.env`` file, return its KEY -> VALUE mapping. Comments, blank lines,
    ``export`` prefixes, quotes and inline comments after unquoted values are understood; lines
    that are not assignments are skipped. A repeated key keeps its last value."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(line)
        if match:
            values[match.group(1)] = _value(match.group(2))
    return values


def register_secrets(values: Mapping[str, str]) -> None:
    """Given env values, add those of secret-looking keys to the default redactor."""
    default_redactor().add(v for k, v in values.items() if is_secret_key(k))


class EnvFile:
    """The deployment's ``.env``. Each :meth:`read` reads the file again, so a rotated secret is
    seen at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, str]:
        """Return the file's values (secrets registered for redaction). Raise InfraError when
        the file cannot be read."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InfraError(f"The deployment's env file {self.path} does not exist.") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise InfraError(f"Cannot read the env file {self.path}: {reason}.") from None
        values = parse_env(text)
        register_secrets(values)
        return values

    def require(self, *keys: str) -> dict[str, str]:
        """Return the values of ``keys``. Raise InfraError naming (never showing) any missing."""
        values = self.read()
        missing = [k for k in keys if not values.get(k)]
        if missing:
            raise InfraError(f"{self.path} does not set {', '.join(missing)}.")
        return {k: values[k] for k in keys}
