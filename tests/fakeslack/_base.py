"""What the Web API fake and the Socket Mode fake share: a server run in a daemon thread, used
with ``with``, and the walk over every string of a JSON value that ``all_text`` reports."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self


def strings(value: Any) -> Iterator[str]:
    """Given a decoded JSON value, yield every string in it, depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)


class Background:
    """A fake whose server loop runs in a daemon thread; ``with`` starts and stops it."""

    _thread: threading.Thread | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _run_in_background(self, serve: Callable[..., None], name: str, **kwargs: Any) -> None:
        self._thread = threading.Thread(target=serve, kwargs=kwargs, name=name, daemon=True)
        self._thread.start()

    def _join_background(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
