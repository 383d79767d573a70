"""The OpenAPI 3.1 document of the HTTP API (DESIGN §4), at `GET /api/v1/openapi.json`.

Schemas are generated from the msgspec types (`kuadeploy.entry`, `kuadeploy.events`,
`kuadeploy.http.schemas`); the operations are listed in `kuadeploy.http.operations`,
every route of DESIGN §4 including those still to be built. Each operation names
the least role that may call it in `x-kua-role`. The document depends only on the
configured servers (the `server` of a new entry must be one of them).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Union

import msgspec
from aiohttp import web

from kuadeploy import __version__
from kuadeploy.commands.deploys import DeployRequest, RollbackRequest
from kuadeploy.entry import AppEntry
from kuadeploy.http import schemas
from kuadeploy.http.common import service
from kuadeploy.http.operations import PROBLEMS, REF, operations
from projections.deploys import DeployView

routes = web.RouteTableDef()

ANSWERS = (
    schemas.ProblemDetails,
    schemas.Health,
    schemas.App,
    schemas.AppList,
    schemas.Changed,
    schemas.DryRun,
    schemas.History,
    schemas.Export,
    schemas.VerifyReport,
    schemas.InclusionProof,
    schemas.ConsistencyProof,
    DeployRequest,
    RollbackRequest,
    schemas.DeployAccepted,
    DeployView,
    schemas.RuntimeStatus,
    schemas.WebhookAnswer,
)


def components() -> dict[str, Any]:
    """Every schema the document refers to, generated from the msgspec types."""
    stored = Union[schemas.stored_event_types()]  # noqa: UP007
    listed = Union[schemas.api_event_types()]  # noqa: UP007
    (stored_schema, event_schema, *_), found = msgspec.json.schema_components(
        (stored, listed, AppEntry, *ANSWERS), ref_template=REF
    )
    for schema in found.values():  # docstrings keep their indentation in msgspec's schemas
        if "description" in schema:
            schema["description"] = inspect.cleandoc(schema["description"])
    found["StoredEvent"] = {"description": "A stored ledger body, decoded", **stored_schema}
    found["Event"] = {"description": "An event as the feed lists it", **event_schema}
    found["EventsPage"] = {
        "type": "object",
        "properties": {
            "events": {"type": "array", "items": {"$ref": REF.format(name="Event")}},
            "next_after": {"type": "integer", "minimum": 0},
        },
        "required": ["events", "next_after"],
        "additionalProperties": False,
    }
    return found


def entry_input(entry: dict[str, Any], servers: list[str]) -> dict[str, Any]:
    """An entry as PUT takes it: its server must be one this service has configured."""
    if not servers:
        return {"$ref": REF.format(name="AppEntry")}
    only = {"properties": {"server": {"enum": servers}}}
    return {"allOf": [{"$ref": REF.format(name="AppEntry")}, only]}


def merge_patch(entry: dict[str, Any], servers: list[str]) -> dict[str, Any]:
    """A JSON Merge Patch (RFC 7396) over an entry: any top-level field, `null` removes it;
    nested objects merge the same way."""
    props = dict(entry["properties"])
    if servers:
        props["server"] = {"enum": servers}
    return {
        "description": "JSON Merge Patch (RFC 7396) over an AppEntry; null removes a field",
        "type": "object",
        "properties": {k: {"anyOf": [v, {"type": "null"}]} for k, v in props.items()},
        "additionalProperties": False,
    }


def problem_responses() -> dict[str, Any]:
    content = {"application/problem+json": {"schema": {"$ref": REF.format(name="ProblemDetails")}}}
    return {name: {"description": text, "content": content} for name, text in PROBLEMS.values()}


def build_document(servers: list[str]) -> dict[str, Any]:
    schemas_ = components()
    schemas_["AppEntryInput"] = entry_input(schemas_["AppEntry"], servers)
    schemas_["MergePatch"] = merge_patch(schemas_["AppEntry"], servers)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kuadeploy",
            "version": __version__,
            "description": (
                "Deploy orchestrator on an event-sourced, hash-chained ledger. Errors are "
                "RFC 9457 problem details. Roles: reader ⊂ deployer ⊂ admin; each "
                "operation's `x-kua-role` is the least role that may call it."
            ),
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": operations(),
        "components": {
            "schemas": schemas_,
            "responses": problem_responses(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API token"},
                "forgejoSignature": _signature("X-Forgejo-Signature", "lowercase hex"),
                "giteaSignature": _signature("X-Gitea-Signature", "lowercase hex"),
                "hubSignature": _signature("X-Hub-Signature-256", "`sha256=<hex>`"),
            },
        },
    }


def _signature(header: str, form: str) -> dict[str, str]:
    return {
        "type": "apiKey",
        "in": "header",
        "name": header,
        "description": f"HMAC-SHA256 of the raw body with the repository's secret, {form}",
    }


@functools.cache
def document_bytes(servers: tuple[str, ...]) -> bytes:
    return msgspec.json.encode(build_document(list(servers)))


@routes.get("/api/v1/openapi.json")
async def openapi_document(request: web.Request) -> web.Response:
    servers = tuple(sorted(service(request).servers))
    return web.Response(body=document_bytes(servers), content_type="application/json")
