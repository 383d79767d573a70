"""Registry routes: list, get, PUT, PATCH, DELETE (with dry runs), history."""

from __future__ import annotations

import msgspec
from aiohttp import web

from kuadeploy.commands.registry import Outcome, Preconditions, etag
from kuadeploy.http.common import flag, json_response, principal, read_json, requires, service

routes = web.RouteTableDef()
# app -> (version, encoded GET answer, its headers): reads of an entry are served as bytes.
RENDERED: web.AppKey[dict[str, tuple[int, bytes, dict[str, str]]]] = web.AppKey(
    "rendered_apps", dict
)
_encoder = msgspec.json.Encoder()


def setup(app: web.Application) -> None:
    app[RENDERED] = {}


MERGE_PATCH = ("application/merge-patch+json", "application/json")


def _preconditions(request: web.Request) -> Preconditions:
    return Preconditions(request.headers.get("If-Match"), request.headers.get("If-None-Match"))


def _render(outcome: Outcome, dry_run: bool, created_status: int = 200) -> web.Response:
    if dry_run:
        return json_response(outcome.dry_run_body())
    status = created_status if outcome.decision.change == "created" else 200
    return json_response(outcome.body(), status, {"ETag": etag(outcome.version)})


@routes.get("/api/v1/apps")
@requires("reader")
async def list_apps(request: web.Request) -> web.Response:
    return json_response(service(request).list_apps())


@routes.get("/api/v1/apps/{app}")
@requires("reader")
async def get_app(request: web.Request) -> web.Response:
    svc, app = service(request), request.match_info["app"]
    version = svc.app_version(app)
    cache = request.app[RENDERED]
    cached = cache.get(app)
    if cached is None or cached[0] != version:  # an entry never changes within a version
        headers = {"Content-Type": "application/json", "ETag": etag(version)}
        cached = cache[app] = (version, _encoder.encode(svc.get_app(app)), headers)
    return web.Response(body=cached[1], headers=cached[2])  # aiohttp copies the headers


@routes.put("/api/v1/apps/{app}")
@requires("admin")
async def put_app(request: web.Request) -> web.Response:
    body = await read_json(request)
    dry_run = flag(request, "dry_run")
    outcome = await service(request).put_app(
        request.match_info["app"], body, principal(request).actor, _preconditions(request), dry_run
    )
    return _render(outcome, dry_run, created_status=201)


@routes.patch("/api/v1/apps/{app}")
@requires("admin")
async def patch_app(request: web.Request) -> web.Response:
    patch = await read_json(request, MERGE_PATCH)
    dry_run = flag(request, "dry_run")
    outcome = await service(request).patch_app(
        request.match_info["app"], patch, principal(request).actor, _preconditions(request), dry_run
    )
    return _render(outcome, dry_run)


@routes.delete("/api/v1/apps/{app}")
@requires("admin")
async def delete_app(request: web.Request) -> web.Response:
    dry_run = flag(request, "dry_run")
    outcome = await service(request).delete_app(
        request.match_info["app"], principal(request).actor, _preconditions(request), dry_run
    )
    return _render(outcome, dry_run)


@routes.get("/api/v1/apps/{app}/history")
@requires("reader")
async def history(request: web.Request) -> web.Response:
    changes = await service(request).history(request.match_info["app"])
    return json_response(
        {"app": request.match_info["app"], "changes": msgspec.to_builtins(changes)}
    )
