"""Shared pieces of the HTTP layer: JSON in and out, roles, problem responses."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from kuadeploy.errors import ApiError
from kuadeploy.jsondoc import MALFORMED_JSON
from kuadeploy.service import Service
from kuadeploy.tokens import Principal

SERVICE: web.AppKey[Service] = web.AppKey("service", Service)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 1024 * 1024
# An entry is a few levels deep; a document that nests to the interpreter's recursion
# limit would fail deep inside the code walking it (a 500), so it is refused first.
MAX_DEPTH = 64
INTEGER = re.compile(r"-?[0-9]{1,19}")  # ASCII digits only: int() also takes "٣" and "1_0"
_encoder = msgspec.json.Encoder()


def requires(role: str) -> Callable[[Handler], Handler]:
    """Mark a handler with the least role that may call it (checked by the auth middleware)."""

    def mark(handler: Handler) -> Handler:
        handler.kua_role = role  # type: ignore[attr-defined]
        return handler

    return mark


def bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer <token>` (RFC 9110 §11.1: the scheme is
    case-insensitive); None for another scheme or none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def service(request: web.Request) -> Service:
    return request.app[SERVICE]


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_encoder.encode(obj), status=status, content_type="application/json", headers=headers
    )


def problem_response(error: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encoder.encode(error.problem()),
        status=error.status,
        content_type="application/problem+json",
        headers=headers,
    )


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "Payload too large", f"request body over {limit} bytes")
    body = await request.read()
    if len(body) > limit:
        raise ApiError(413, "Payload too large", f"request body over {limit} bytes")
    return body


async def read_json(
    request: web.Request,
    types: tuple[str, ...] = ("application/json",),
    limit: int = MAX_BODY,
) -> Any:
    """The request's JSON document: 415 for another media type, 413 when too large,
    400 when it is not JSON at all or nested deeper than MAX_DEPTH."""
    ctype = request.content_type
    if ctype not in types and not (ctype.startswith("application/") and ctype.endswith("+json")):
        raise ApiError(415, "Unsupported media type", f"send {' or '.join(types)}, not {ctype!r}")
    body = await read_body(request, limit)
    try:
        doc = msgspec.json.decode(body)
    except MALFORMED_JSON as exc:
        raise ApiError.bad_request(f"malformed JSON: {exc}") from exc
    # Nesting needs as many brackets; counting them in C spares the walk of a PATCH.
    deep = body.count(b"{") + body.count(b"[") > MAX_DEPTH
    if deep and not _nested_within(doc, MAX_DEPTH):
        raise ApiError.bad_request(f"JSON nested deeper than {MAX_DEPTH} levels")
    return doc


def _nested_within(doc: Any, limit: int) -> bool:
    """Without recursion: the code that walks a document (merge patch, diff) recurses."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in node)
    return True


_TRUE, _FALSE = ("", "1", "true", "yes", "on"), ("0", "false", "no", "off")


def flag(request: web.Request, name: str) -> bool:
    """A yes/no query parameter; a bare `?name` is yes. Anything else is a 400: a
    `?dry_run=y` that went ahead as a real write would be the costly way to learn."""
    if not request.query_string:  # the usual case: no query to parse
        return False
    raw = request.query.get(name)
    if raw is None:
        return False
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ApiError.bad_request(f"{name} must be 1 or 0, not {raw[:40]!r}")


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not INTEGER.fullmatch(raw):
        raise ApiError.bad_request(f"{name} must be an integer")
    value = int(raw)
    if not lo <= value <= hi:
        raise ApiError.bad_request(f"{name} must be between {lo} and {hi}")
    return value


def last_event_id(request: web.Request, default: int) -> int:
    """Where an SSE stream resumes: `Last-Event-ID`, else `?after=`, else `default`.
    ASCII digits within SQLite's range (int() also takes "٣", "1_0" and 30 digits,
    which then broke the stream after its headers were sent)."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("after")
    if not raw:
        return default
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ApiError.bad_request("Last-Event-ID must be a seq")
    return int(raw)
