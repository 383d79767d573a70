"""Ledger routes: the events feed and its SSE stream, registry export, audit, health."""

from __future__ import annotations

import msgspec
from aiohttp import web

from kuadeploy import GIT_SHA, __version__
from kuadeploy.http.common import (
    bearer_token,
    flag,
    int_param,
    json_response,
    last_event_id,
    requires,
    service,
)
from kuadeploy.ledger import StoredEvent

routes = web.RouteTableDef()


def event_json(stored: StoredEvent) -> dict:
    ev = stored.event
    return {
        "seq": ev.seq,
        "ts": ev.ts,
        "stream": ev.stream,
        "version": ev.version,
        "type": ev.type,
        "actor": ev.actor,
        "data": msgspec.to_builtins(ev.data),
        "hash": stored.hash.hex(),
        "body": stored.body.decode(),
    }


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    svc = service(request)
    return json_response(
        {
            "status": "ok",
            "version": __version__,
            "git_sha": GIT_SHA,
            "head_seq": svc.ledger.head.seq,
            **svc.health_details(),
        }
    )


@routes.get("/api/v1/events")
@requires("reader")
async def events_page(request: web.Request) -> web.Response:
    after = int_param(request, "after", 0, 0, 2**62)
    limit = int_param(request, "limit", 100, 1, 1000)
    page = await service(request).ledger.read(after, limit)
    next_after = page[-1].seq if page else after
    return json_response({"events": [event_json(s) for s in page], "next_after": next_after})


@routes.get("/api/v1/events/stream")
@requires("reader")
async def events_stream(request: web.Request) -> web.StreamResponse:
    svc = service(request)
    after = last_event_id(request, svc.ledger.head.seq)
    return await sse(request, after, lambda a: svc.ledger.read(a, 500), event_json)


async def sse(request, after, fetch, render, done=lambda: False) -> web.StreamResponse:
    """Stream what `fetch(after)` returns as SSE, waiting for commits, with heartbeats,
    until `done()` says nothing more will come (then the stream ends)."""
    svc = service(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    heartbeat = svc.config.sse_heartbeat_s
    token = bearer_token(request) or ""
    while not svc.notifier.closed:
        # A stream is one request that never ends: once its token is revoked it must
        # stop getting the ledger, as every other request of that token does.
        if svc.tokens.authenticate(token) is None:
            break
        finished = done()  # before the read: an end committed during it is still sent
        page = await fetch(after)
        if page:
            chunk = []
            for stored in page:
                data = msgspec.json.encode(render(stored)).decode()
                chunk.append(f"id: {stored.seq}\nevent: {stored.event.type}\ndata: {data}\n\n")
                after = stored.seq
            await response.write("".join(chunk).encode())
            continue
        if finished:
            break
        if svc.ledger.head.seq > after:
            continue  # committed after our read: no need to wait
        if not await svc.notifier.wait(heartbeat):
            await response.write(b": heartbeat\n\n")
    return response


@routes.get("/api/v1/registry/export")
@requires("reader")
async def export(request: web.Request) -> web.Response:
    svc = service(request)
    doc = await svc.export(request.query.get("at") or None)
    if flag(request, "snapshot"):
        doc = {**doc, "snapshot_path": await svc.write_export_file(doc)}
    return json_response(doc)


@routes.get("/api/v1/audit/verify")
@requires("reader")
async def audit_verify(request: web.Request) -> web.Response:
    result = await service(request).verify(full=flag(request, "full"))
    return json_response(result.to_json())
