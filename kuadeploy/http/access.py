"""Every request, once: an access-log line and the request metrics, both in batches.

A request only appends a tuple. Turning it into a JSON line (through `logging` a
line costs ~20 µs: a LogRecord, the caller's frame, a formatter, a flush) and into
the per-route counts happens for a batch at a time, at most `FLUSH_AFTER_S`
later — the way nginx buffers `access_log ... flush=`. `/metrics` and shutdown
flush first, so nothing is lost or stale where it is looked at. Lines have the
shape of the other JSON log lines (`ts`, `level`, `logger`, then the fields).
Without a stream (tests, embedding) they go to the `kuadeploy.access` logger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import BinaryIO

import msgspec

from kuadeploy.http.metrics import RequestMetrics

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


class RequestLog:
    FLUSH_AFTER_S = 0.05
    FLUSH_AT = 512  # lines

    def __init__(self, metrics: RequestMetrics) -> None:
        self.stream: BinaryIO | None = None
        self._metrics = metrics
        # (route, method, path, status, seconds, actor, wall clock)
        self._pending: list[tuple[str, str, str, int, float, str | None, float]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._encoder = msgspec.json.Encoder()
        self._second = -1
        self._stamp = ""
        self._milli = -1
        self._milli_stamp = ""

    def record(
        self, route: str, method: str, path: str, status: int, seconds: float, actor: str | None
    ) -> None:
        pending = self._pending
        pending.append((route, method, path, status, seconds, actor, time.time()))
        if len(pending) == 1:
            self._timer = asyncio.get_running_loop().call_later(self.FLUSH_AFTER_S, self.flush)
        elif len(pending) >= self.FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        observe = self._metrics.observe
        lines = []
        for route, method, path, status, seconds, actor, wall in pending:
            observe(route, method, status, seconds)
            ms = round(seconds * 1000, 2)
            if self.stream is None:
                fields = {"method": method, "path": path, "status": status, "ms": ms}
                log.info({**fields, "actor": actor})
                continue
            ts = self._ts(wall)
            lines.append(AccessLine(ts, "INFO", LOGGER, method, path, status, ms, actor))
        if lines and self.stream is not None:
            try:
                self.stream.write(self._encoder.encode_lines(lines))
                self.stream.flush()
            except OSError:  # a closed or full stderr must not fail the request at hand
                pass

    def _ts(self, wall: float) -> str:
        """`logging.Formatter`'s local time with milliseconds; under load many lines
        share a millisecond, and all of a second share its date and time."""
        milli = int(wall * 1000)
        if milli != self._milli:
            second = milli // 1000
            if second != self._second:
                self._second = second
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._milli = milli
            self._milli_stamp = f"{self._stamp},{milli % 1000:03d}"
        return self._milli_stamp
