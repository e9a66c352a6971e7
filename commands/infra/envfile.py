"""Read and rewrite the deployment's ``.env`` (the one docker compose reads beside its compose
file).

Values of keys that look secret (``*PASSWORD*``, ``*SECRET*``, ``*KEY*``, ``*TOKEN*``) are added
to the default redactor the moment they are read, and new values before they are written, so they
can never reach chat or a log.

Writing (secret rotation) changes only the values of the given keys: every other line, comment
and the order stay as they were. The new text goes to a temporary file in the same folder with
the old file's mode and owner, is fsynced, renamed over the old one, and the folder is fsynced:
a reader (compose) sees the old file or the new one, never half of one. Writers of one folder
take turns (``flock`` on the folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
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
        values = parse_env(self._text())
        register_secrets(values)
        return values

    def require(self, *keys: str) -> dict[str, str]:
        """Return the values of ``keys``. Raise InfraError naming (never showing) any missing."""
        values = self.read()
        missing = [k for k in keys if not values.get(k)]
        if missing:
            raise InfraError(f"{self.path} does not set {', '.join(missing)}.")
        return {k: values[k] for k in keys}

    def update(
        self, updates: Mapping[str, str], *, expect: Mapping[str, str] | None = None
    ) -> None:
        """Given KEY -> new value, rewrite the file atomically with those values (see
        :func:`update_env_text`, :func:`atomic_replace`). The new values are registered for
        redaction before anything is written. With ``expect`` (KEY -> value it must have now),
        nothing is written when another writer changed one of them. Raise InfraError naming
        the keys, never a value."""
        register_secrets(updates)
        target = Path(os.path.realpath(self.path))
        with folder_lock(target.parent):
            text = self._text()
            if expect:
                current = parse_env(text)
                changed = sorted(k for k, v in expect.items() if current.get(k) != v)
                if changed:
                    raise InfraError(
                        f"{self.path} was changed by someone else ({', '.join(changed)}); "
                        "nothing was written."
                    )
            try:
                new = update_env_text(text, updates)
            except ValueError as exc:
                raise InfraError(f"Cannot write {self.path}: {exc}.") from None
            atomic_replace(self.path, new.encode("utf-8"))

    def _text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InfraError(f"The deployment's env file {self.path} does not exist.") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise InfraError(f"Cannot read the env file {self.path}: {reason}.") from None


# --- writing ------------------------------------------------------------------------------------
_UNQUOTED_SAFE = re.compile(r"^[^\s'\"#$\\`]*$")
_DOUBLE_UNSAFE = re.compile(r"[\"\\$`]")


def format_value(value: str, quote: str = "") -> str:
    """Given a value and the quote of the line it replaces (``''``, ``'"'`` or ``"'"``), return
    it as written in ``.env`` so that compose and :func:`parse_env` read it back unchanged:
    in that quote when it can hold the value, else in single quotes (no interpolation). Raise
    ValueError (without the value) when no quoting can hold it (a line break, or ``'`` with
    characters that need quotes)."""
    if any(ch in value for ch in "\n\r\0"):
        raise ValueError("the value has a line break or NUL, which a .env line cannot hold")
    if quote == '"' and not _DOUBLE_UNSAFE.search(value):
        return f'"{value}"'
    if quote == "" and _UNQUOTED_SAFE.match(value):
        return value
    if "'" not in value:
        return f"'{value}'"
    raise ValueError("the value mixes a single quote with characters that need quotes")


def _split_value(rest: str) -> tuple[str, str]:
    """Given what follows ``KEY=`` on a line (without the line break), return (the quote used,
    what follows the value: spaces and an inline comment)."""
    if rest[:1] in {'"', "'"}:
        quote = rest[0]
        end = rest.find(quote, 1)
        while quote == '"' and end > 0 and rest[end - 1] == "\\":
            end = rest.find(quote, end + 1)
        if end > 0:
            return quote, rest[end + 1 :]
        return "", ""  # an unbalanced quote: the whole rest was the value
    comment = re.search(r"\s#", rest)
    value = rest[: comment.start()] if comment else rest
    return "", rest[len(value.rstrip()) :]


def update_env_text(text: str, updates: Mapping[str, str]) -> str:
    """Given the text of a ``.env`` and KEY -> new value, return the text with those values
    changed (every line that sets the key, keeping its ``export``, spacing, quote and inline
    comment) and keys it lacked appended. Every other line stays byte for byte. Raise ValueError
    naming the key (never the value) when a value cannot be written."""
    lines = text.splitlines(keepends=True)
    seen: set[str] = set()
    out: list[str] = []
    for line in lines:
        body = line.rstrip("\r\n")
        eol = line[len(body) :]
        match = _LINE.match(body)
        stripped = body.strip()
        if match is None or stripped.startswith("#") or match.group(1) not in updates:
            out.append(line)
            continue
        key = match.group(1)
        rest = match.group(2)
        prefix = body[: match.start(2)]
        quote, trailing = _split_value(rest.lstrip())
        prefix += rest[: len(rest) - len(rest.lstrip())]
        try:
            value = format_value(updates[key], quote)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
        out.append(prefix + value + trailing + eol)
        seen.add(key)
    missing = [k for k in updates if k not in seen]
    if missing and out and not out[-1].endswith(("\n", "\r")):
        out[-1] += "\n"
    for key in missing:
        if not _LINE.match(f"{key}=x"):
            raise ValueError(f"{key[:40]!r} is not a variable name")
        try:
            out.append(f"{key}={format_value(updates[key])}\n")
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    new = "".join(out)
    before, after = parse_env(text), parse_env(new)
    wrong = [k for k in updates if after.get(k) != updates[k]]
    wrong += [k for k in before if k not in updates and after.get(k) != before[k]]
    if wrong:  # a line this module cannot rewrite faithfully: refuse rather than guess
        raise ValueError(f"{', '.join(sorted(set(wrong)))} would not read back as intended")
    return new


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on a folder (writers of files in it take turns, across
    processes too)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def atomic_replace(path: Path, data: bytes) -> None:
    """Given a file and its new content, replace it atomically: a temporary file in the same
    folder with the old file's mode and owner, written and fsynced, renamed over the old one,
    then the folder fsynced. A symbolic link is followed (its target is replaced). Raise
    InfraError (the file unchanged) when any step fails."""
    target = Path(os.path.realpath(path))
    folder = target.parent
    try:
        st = os.stat(target)
    except OSError as exc:
        raise InfraError(f"Cannot read {path}: {exc.strerror or type(exc).__name__}.") from None
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, st.st_mode & 0o7777)
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, st.st_uid, st.st_gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        tmp = ""
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InfraError(f"Cannot write {path} ({reason}); it was left unchanged.") from None
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
