"""Progress of long offline work (verify, rebuild) on stderr: how many events so far,
at most one line a second, and a last line when the work ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

_EVERY_ROWS = 65536  # how often an iteration looks at the clock


class Progress:
    def __init__(self, what: str, total: int = 0, out: TextIO | None = None, every_s: float = 1.0):
        self.what, self.total = what, total  # the total may be set once it is known
        self.out = out or sys.stderr
        self.every_s = every_s
        self._next = time.monotonic() + every_s

    def update(self, done: int) -> None:
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self.every_s
            self._line(done)

    def finish(self, done: int) -> None:
        self._line(done)

    def _line(self, done: int) -> None:
        share = f" ({100 * done // self.total}%)" if self.total else ""
        print(f"{self.what}: {done:,} of {self.total:,} events{share}", file=self.out, flush=True)

    def counted(self, items: Iterable[T]) -> Iterator[T]:
        """`items`, reporting how many have gone by (and all of them at the end)."""
        done = 0
        for done, item in enumerate(items, 1):
            if not done % _EVERY_ROWS:
                self.update(done)
            yield item
        self.finish(done)


def wanted(flag: bool | None) -> bool:
    """--progress / --no-progress, else only when stderr is a terminal (as git does)."""
    return sys.stderr.isatty() if flag is None else flag
