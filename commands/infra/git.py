"""The deployment's git checkout through the gateway (``git -C DIR ...``, argv only).

Refs and SHAs typed in chat are validated here before they reach git; every argv puts
``--end-of-options`` (or ``--``) before user text, so nothing typed can become an option. git
runs with a fixed locale, no terminal prompt and no pager.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from commands.infra import gateway
from commands.infra.gateway import CommandFailed, Completed, InfraError

Runner = Callable[..., Completed]
SHA = re.compile(r"^[0-9a-fA-F]{7,40}$")
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
REF_MAX = 100
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
GIT_ENV = {
    "LC_ALL": "C",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_PAGER": "cat",
    "GIT_OPTIONAL_LOCKS": "0",
}


def parse_ref(text: str) -> str:
    """Given a branch, tag or commit as typed, return it. Raise ValueError with a sentence when
    it cannot be a safe git ref (a leading ``-``, ``..``, ``@{``, odd characters, too long)."""
    ref = text.strip()
    if not ref or len(ref) > REF_MAX:
        raise ValueError(f"expected a branch, tag or commit of 1 to {REF_MAX} characters")
    if not _REF.match(ref):
        raise ValueError(
            "a ref has letters, digits and . _ / - only, and starts with a letter/digit"
        )
    bad = (
        ".." in ref
        or "//" in ref
        or ref.endswith(("/", ".", ".lock"))
        or "/." in ref
        or ref.startswith("-")
    )
    if bad:
        raise ValueError(f"`{ref}` is not a valid git ref name")
    return ref


def parse_sha(text: str) -> str:
    """Given a commit SHA as typed, return it in lower case. Raise ValueError unless it is 7 to
    40 hexadecimal digits."""
    sha = text.strip()
    if not SHA.match(sha):
        raise ValueError("expected a commit SHA: 7 to 40 hexadecimal digits")
    return sha.lower()


@dataclass(frozen=True)
class Commit:
    """One line of ``git log --oneline``: the short SHA and the subject."""

    sha: str
    subject: str

    @property
    def line(self) -> str:
        return f"{self.sha} {self.subject}"


class Git:
    """A git checkout. Every call is ``git -C DIR ARGS`` through the gateway."""

    def __init__(self, repo: Path, *, timeout: float = 60.0, runner: Runner = gateway.run) -> None:
        self.repo = Path(repo)
        self.timeout = timeout
        self._run = runner

    def argv(self, *args: str) -> tuple[str, ...]:
        """Return the argv of ``git ARGS`` in this checkout (for a plan's steps)."""
        return ("git", "-C", str(self.repo), *args)

    def run(self, *args: str, timeout: float | None = None) -> Completed:
        """Run ``git ARGS``. Raise CommandFailed/CommandTimeout when it fails."""
        return self._run(
            self.argv(*args),
            timeout=self.timeout if timeout is None else timeout,
            env=GIT_ENV,
        )

    def run_argv(self, argv: tuple[str, ...], timeout: float | None = None) -> Completed:
        """Run an argv made by :meth:`argv` (a planned step). Raise InfraError for any other."""
        if argv[:3] != ("git", "-C", str(self.repo)):
            raise InfraError("Refusing to run an argv that is not a git call in the checkout.")
        return self.run(*argv[3:], timeout=timeout)

    def check(self) -> None:
        """Raise InfraError when the folder is not a git checkout."""
        try:
            self.run("rev-parse", "--git-dir", timeout=30)
        except CommandFailed as exc:
            why = f" ({exc.stderr_tail[:200]})" if exc.stderr_tail else ""
            raise InfraError(f"{self.repo} is not a git checkout git can use{why}.") from None

    def head(self) -> str:
        """Return the full SHA of HEAD."""
        return self.run("rev-parse", "--verify", "HEAD").text.strip()

    def branch(self) -> str | None:
        """Return the checked-out branch, or None for a detached HEAD."""
        try:
            out = self.run("symbolic-ref", "--quiet", "--short", "HEAD").text.strip()
        except CommandFailed as exc:
            if exc.returncode == 1:
                return None
            raise
        return out or None

    def resolve(self, rev: str) -> str | None:
        """Given a revision (a ref or a SHA, already validated), return the full SHA of the
        commit it names, or None when there is none (or a short SHA is ambiguous)."""
        try:
            out = self.run(
                "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"
            )
        except CommandFailed:
            return None
        sha = out.text.strip()
        return sha if FULL_SHA.match(sha) else None

    def is_ancestor(self, older: str, newer: str) -> bool:
        """Return True when ``older`` is an ancestor of (or equal to) ``newer``."""
        try:
            self.run("merge-base", "--is-ancestor", older, newer)
        except CommandFailed as exc:
            if exc.returncode == 1:
                return False
            raise
        return True

    def log(self, older: str, newer: str, limit: int = 50) -> list[Commit]:
        """Return the commits in ``older..newer`` (newest first), at most ``limit``."""
        out = self.run(
            "log", "--no-decorate", "--no-color", f"--max-count={int(limit)}",
            "--format=%h %s", f"{older}..{newer}", "--",
        ).text  # fmt: skip
        commits = []
        for line in out.splitlines():
            sha, _, subject = line.partition(" ")
            if sha:
                commits.append(Commit(sha, subject.strip()))
        return commits

    def count(self, older: str, newer: str) -> int:
        """Return how many commits ``older..newer`` holds."""
        return int(self.run("rev-list", "--count", f"{older}..{newer}", "--").text.strip() or 0)

    def has_path(self, sha: str, path: str) -> bool:
        """Return True when the commit has a file at ``path``."""
        try:
            self.run("cat-file", "-e", f"{sha}:{path}")
        except CommandFailed:
            return False
        return True

    def dirty(self) -> list[str]:
        """Return the tracked files with changes that are not committed."""
        out = self.run("status", "--porcelain", "--untracked-files=no").text
        return [line[3:] for line in out.splitlines() if len(line) > 3]

    def fetch(self, remote: str, timeout: float) -> None:
        """Fetch ``remote`` (remote-tracking refs and objects only; the checkout is not
        touched). Raise CommandFailed/CommandTimeout when it fails."""
        self.run("fetch", "--quiet", "--prune", "--no-recurse-submodules", remote, timeout=timeout)
