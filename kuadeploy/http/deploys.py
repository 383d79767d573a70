"""Deploy routes: request, progress, runtime status, one deploy and its stream, approve,
cancel, roll back."""

from __future__ import annotations

import msgspec
from aiohttp import web

from kuadeploy.commands.deploys import DeployRequest, Requested, RollbackRequest
from kuadeploy.errors import ApiError
from kuadeploy.http.common import (
    json_response,
    last_event_id,
    principal,
    read_body,
    requires,
    service,
)
from kuadeploy.http.ledger import event_json, sse
from projections.deploys import ACTIVE

routes = web.RouteTableDef()


async def _body(request: web.Request, cls: type) -> object:
    raw = await read_body(request)
    if not raw.strip():
        return cls()
    if request.content_type not in ("application/json",):
        raise ApiError(415, "Unsupported media type", "send application/json")
    try:
        return msgspec.json.decode(raw, type=cls)
    except msgspec.ValidationError as exc:
        raise ApiError.invalid_one("$", str(exc), "Invalid request") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ApiError.bad_request(f"malformed JSON: {exc}") from exc


def _accepted(result: Requested) -> web.Response:
    if result.noop:
        body = {"deploy_id": result.deploy_id, "noop": True, "reason": result.reason}
        return json_response(body, 200)
    return json_response({"deploy_id": result.deploy_id, "superseded": result.superseded}, 202)


@routes.post("/api/v1/apps/{app}/deploy")
@requires("deployer")
async def deploy(request: web.Request) -> web.Response:
    body = await _body(request, DeployRequest)
    assert isinstance(body, DeployRequest)
    result = await service(request).request_deploy(
        request.match_info["app"],
        principal(request).actor,
        sha=body.sha,
        ref=body.ref,
        force=body.force,
    )
    return _accepted(result)


@routes.post("/api/v1/apps/{app}/rollback")
@requires("deployer")
async def rollback(request: web.Request) -> web.Response:
    body = await _body(request, RollbackRequest)
    assert isinstance(body, RollbackRequest)
    result = await service(request).rollback(
        request.match_info["app"], body.to, principal(request).actor
    )
    return _accepted(result)


@routes.get("/api/v1/apps/{app}/progress")
@requires("reader")
async def progress(request: web.Request) -> web.Response:
    return json_response(msgspec.to_builtins(service(request).progress(request.match_info["app"])))


@routes.get("/api/v1/apps/{app}/runtime-status")
@requires("reader")
async def runtime_status(request: web.Request) -> web.Response:
    return json_response(await service(request).runtime_status(request.match_info["app"]))


@routes.get("/api/v1/deploys/{id}")
@requires("reader")
async def deploy_view(request: web.Request) -> web.Response:
    view = await service(request).deploy_view(request.match_info["id"])
    return json_response(msgspec.to_builtins(view))


@routes.get("/api/v1/deploys/{id}/stream")
@requires("reader")
async def deploy_stream(request: web.Request) -> web.StreamResponse:
    svc, deploy_id = service(request), request.match_info["id"]
    await svc.deploy_view(deploy_id)  # 404 before the stream starts
    after = last_event_id(request, 0)
    stream = f"deploy/{deploy_id}"

    def finished() -> bool:
        view = svc.state.deploys.views.get(deploy_id)
        return view is None or view.status not in ACTIVE

    async def fetch(after: int):
        return await svc.ledger.read_stream(stream, after_seq=after)

    def render(stored):
        return event_json(stored)

    return await sse(request, after, fetch, render, finished)


@routes.post("/api/v1/deploys/{id}/approve")
@requires("admin")
async def approve(request: web.Request) -> web.Response:
    view = await service(request).approve_deploy(request.match_info["id"], principal(request).actor)
    return json_response(msgspec.to_builtins(view))


@routes.post("/api/v1/deploys/{id}/cancel")
@requires("deployer")
async def cancel(request: web.Request) -> web.Response:
    view = await service(request).cancel_deploy(request.match_info["id"], principal(request).actor)
    return json_response(msgspec.to_builtins(view))
