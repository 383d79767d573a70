"""Helpers for webhook tests: a forge git endpoint that never answers, and a sender."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.api_support import Api
from tests.forge import Delivery

SECRET = "forge-secret-3f9c"


@pytest.fixture
async def stalled_forge() -> AsyncIterator[str]:
    """http://127.0.0.1:PORT of a "forge" that accepts git connections and never
    answers: a deploy of a repo there stays in its fetch step (queued or running)
    for as long as the test needs, and no traffic leaves the machine."""
    writers: list[asyncio.StreamWriter] = []
    handlers: list[asyncio.Task] = []
    closing = False

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        if closing:  # accepted while the fixture was closing: let that fetch fail now
            writer.close()
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    closing = True
    server.close()
    # The blocked fetch threads see EOF and finish (the loop waits for them at close).
    # Handlers of connections accepted just before the close may still start: go on
    # until a round finds none new.
    while True:
        seen = len(handlers)
        for writer in writers:
            writer.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        await asyncio.sleep(0.05)
        if len(handlers) == seen:
            break
    await server.wait_closed()


async def post(api: Api, d: Delivery, path: str = "/webhook/forgejo") -> tuple[int, Any, float]:
    """(status, body, seconds) of sending the delivery as the forge does."""
    started = time.perf_counter()
    status, body, _ = await api.call("POST", path, role=None, data=d.body, headers=d.headers)
    return status, body, time.perf_counter() - started


async def ledger_events(api: Api) -> list[dict[str, Any]]:
    _, page, _ = await api.call("GET", "/api/v1/events?limit=1000", role="reader")
    return page["events"]


async def webhook_events(api: Api) -> list[dict[str, Any]]:
    return [e for e in await ledger_events(api) if e["stream"].startswith("webhook/")]


async def requested(api: Api) -> list[dict[str, Any]]:
    return [e for e in await ledger_events(api) if e["type"] == "DeployRequested"]


async def rejected_count(api: Api, reason: str) -> float:
    _, text, _ = await api.call("GET", "/metrics", role=None)
    text = text.decode() if isinstance(text, bytes) else text
    for line in text.splitlines():
        if line.startswith(f'kuadeploy_webhook_rejected_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0
