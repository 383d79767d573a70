"""The request log: access-log lines and request metrics, made in batches."""

from __future__ import annotations

import asyncio
import io
import json

from kuadeploy.http.access import RequestLog
from kuadeploy.http.metrics import RequestMetrics


class Broken(io.RawIOBase):
    def write(self, data) -> int:  # type: ignore[override]
        raise BrokenPipeError("stderr is gone")


async def test_lines_and_counts_come_within_the_flush_interval():
    metrics = RequestMetrics()
    log = RequestLog(metrics)
    log.stream = io.BytesIO()
    log.record("/api/v1/apps/{app}", "GET", "/api/v1/apps/web", 200, 0.0012, "kavi")
    log.record("/api/v1/apps/{app}", "PATCH", "/api/v1/apps/web", 412, 0.003, "kavi")
    log.record("unmatched", "GET", "/nope", 404, 0.0001, None)
    assert log.stream.getvalue() == b"" and metrics.counts == {}  # not yet: batched
    await asyncio.sleep(RequestLog.FLUSH_AFTER_S * 2)
    lines = [json.loads(x) for x in log.stream.getvalue().splitlines()]
    assert [(x["method"], x["path"], x["status"], x["actor"]) for x in lines] == [
        ("GET", "/api/v1/apps/web", 200, "kavi"),
        ("PATCH", "/api/v1/apps/web", 412, "kavi"),
        ("GET", "/nope", 404, None),
    ]
    assert list(lines[0]) == ["ts", "level", "logger", "method", "path", "status", "ms", "actor"]
    assert lines[0]["ms"] == 1.2 and lines[0]["logger"] == "kuadeploy.access"
    assert metrics.counts == {
        ("/api/v1/apps/{app}", "GET", 200): 1,
        ("/api/v1/apps/{app}", "PATCH", 412): 1,
        ("unmatched", "GET", 404): 1,
    }


async def test_a_full_batch_is_written_at_once_and_flush_is_idempotent():
    log = RequestLog(RequestMetrics())
    log.stream = io.BytesIO()
    for _ in range(RequestLog.FLUSH_AT):
        log.record("/healthz", "GET", "/healthz", 200, 0.0001, None)
    assert log.stream.getvalue().count(b"\n") == RequestLog.FLUSH_AT
    log.flush()
    log.flush()
    assert log.stream.getvalue().count(b"\n") == RequestLog.FLUSH_AT


async def test_a_broken_stream_does_not_fail_the_request():
    metrics = RequestMetrics()
    log = RequestLog(metrics)
    log.stream = Broken()
    log.record("/healthz", "GET", "/healthz", 200, 0.0001, None)
    log.flush()  # no exception
    assert metrics.counts == {("/healthz", "GET", 200): 1}
