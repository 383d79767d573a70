"""Audit routes: the latest signed checkpoint and Merkle proofs (RFC 6962/9162)."""

from __future__ import annotations

from aiohttp import web

from kuadeploy.audit.checkpoints import (
    ProofRequestError,
    checkpoint_text,
    consistency_from_query,
    inclusion_from_query,
)
from kuadeploy.errors import ApiError
from kuadeploy.http.common import json_response, requires, service

routes = web.RouteTableDef()


def _checkpointer(request: web.Request):
    cp = service(request).checkpointer
    if cp is None:
        raise ApiError(503, "Unavailable", "checkpoints are not running")
    return cp


@routes.get("/api/v1/audit/checkpoint")
@requires("reader")
async def checkpoint(request: web.Request) -> web.Response:
    try:
        text = checkpoint_text(_checkpointer(request))
    except ProofRequestError as exc:
        raise ApiError(503, "Unavailable", str(exc)) from exc
    return web.Response(text=text, content_type="text/plain")


@routes.get("/api/v1/audit/proof/inclusion")
@requires("reader")
async def inclusion(request: web.Request) -> web.Response:
    return await _proof(request, inclusion_from_query)


@routes.get("/api/v1/audit/proof/consistency")
@requires("reader")
async def consistency(request: web.Request) -> web.Response:
    return await _proof(request, consistency_from_query)


async def _proof(request: web.Request, from_query) -> web.Response:
    try:
        body = await from_query(service(request).ledger, _checkpointer(request), request.query)
    except ProofRequestError as exc:
        raise ApiError.bad_request(str(exc)) from exc
    return json_response(body)
