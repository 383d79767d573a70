"""The access log: one JSON line per request, cheap enough for every request.

Through `logging` a line costs ~20 µs (a LogRecord, the caller's frame, a
formatter, a flush per line) — more than the handlers serving most routes. Once
`serve` has given it a stream, lines are encoded with msgspec and written in one
batch per event-loop turn, in the same shape as the other JSON log lines
(`ts`, `level`, `logger`, then the fields). Without a stream (tests, embedding)
they go to the `kuadeploy.access` logger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import BinaryIO

import msgspec

LOGGER = "kuadeploy.access"
log = logging.getLogger(LOGGER)


class AccessLine(msgspec.Struct, gc=False):
    """The fields of one line, in the order of the other JSON log lines."""

    ts: str
    level: str
    logger: str
    method: str
    path: str
    status: int
    ms: float
    actor: str | None


class AccessLog:
    def __init__(self) -> None:
        self.stream: BinaryIO | None = None
        self._pending: list[bytes] = []
        self._encoder = msgspec.json.Encoder()
        self._second = -1
        self._stamp = ""

    def record(self, method: str, path: str, status: int, ms: float, actor: str | None) -> None:
        if self.stream is None:
            log.info({"method": method, "path": path, "status": status, "ms": ms, "actor": actor})
            return
        now = time.time()
        stamp = f"{self._local_second(int(now))},{int(now * 1000) % 1000:03d}"
        line = AccessLine(stamp, "INFO", LOGGER, method, path, status, ms, actor)
        self._pending.append(self._encoder.encode(line))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self._pending and self.stream is not None:
            self._pending.append(b"")
            self.stream.write(b"\n".join(self._pending))
            self.stream.flush()
        self._pending.clear()

    def _local_second(self, second: int) -> str:
        """`logging.Formatter.formatTime`'s local time, formatted once a second."""
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return self._stamp
