"""Every operation of the HTTP API (DESIGN §4) as OpenAPI 3.1 path items.

Routes still to be built are described from DESIGN §4 too, so the document is the
whole contract. `x-kua-role` is the least role that may call an operation (the
`requires(role)` of its handler); operations without it need no token.
"""

from __future__ import annotations

from typing import Any

from kuadeploy.validation import APP_NAME

REF = "#/components/schemas/{name}"

PROBLEMS = {
    400: ("BadRequest", "Malformed JSON, a missing header or a malformed parameter"),
    401: ("Unauthorized", "No token, or an unknown one"),
    403: ("Forbidden", "The token's role is too weak for this route"),
    404: ("NotFound", "No such app, deploy or resource"),
    409: ("Conflict", "The deploy is not in a state that allows this"),
    412: ("PreconditionFailed", "If-Match does not match, or If-None-Match: * and it exists"),
    413: ("PayloadTooLarge", "The request body is over the route's limit (1 MiB; webhooks 5 MiB)"),
    415: ("UnsupportedMediaType", "The request body is not of a media type this route takes"),
    422: ("Unprocessable", "Invalid entry or parameter; `errors` lists every problem"),
    503: (
        "Unavailable",
        "Try again: the app kept changing concurrently, or no checkpoint is signed yet",
    ),
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def param(
    name: str, where: str, schema: dict[str, Any], description: str, required: bool = False
) -> dict[str, Any]:
    out = {"name": name, "in": where, "description": description, "schema": schema}
    if required or where == "path":
        out["required"] = True
    return out


APP = param("app", "path", {"type": "string", "pattern": APP_NAME.pattern}, "The app's name")
DEPLOY_ID = param("id", "path", {"type": "string"}, "A deploy id")
DRY_RUN = param(
    "dry_run", "query", {"type": "boolean"}, "Answer what the call would do; write nothing"
)
IF_MATCH = param(
    "If-Match", "header", {"type": "string"}, 'Only if the entry\'s ETag is one of these ("*": any)'
)
IF_NONE_MATCH = param(
    "If-None-Match",
    "header",
    {"type": "string"},
    "`*`: create only; ETags: only if the entry's is none of them (weak comparison)",
)
LAST_EVENT_ID = param(
    "Last-Event-ID", "header", {"type": "string", "pattern": "^[0-9]+$"}, "Resume after this seq"
)
STREAM_AFTER = param(
    "after", "query", {"type": "integer", "minimum": 0}, "Resume after this seq (as Last-Event-ID)"
)
ETAG = {
    "description": 'The entry\'s version as an entity tag, e.g. `"3"`',
    "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
}
SSE = {
    "text/event-stream": {
        "schema": {
            "description": "One Server-Sent Event; idle streams get `: heartbeat` comments",
            "type": "object",
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the seq"},
                "event": {"type": "string", "description": "the event type"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": ref("Event"),
                },
            },
            "required": ["id", "event", "data"],
        }
    }
}


def json_content(schema: dict[str, Any], *media: str) -> dict[str, Any]:
    return {m: {"schema": schema} for m in media or ("application/json",)}


def answer(description: str, schema: dict[str, Any], headers: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description, "content": json_content(schema)}
    if headers:
        out["headers"] = headers
    return out


def op(
    op_id: str,
    summary: str,
    tag: str,
    answers: dict[str, Any],
    *,
    role: str | None = None,
    params: tuple[dict, ...] = (),
    body: dict[str, Any] | None = None,
    body_required: bool = True,
    errors: tuple[int, ...] = (),
    security: list[dict] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """One operation; bearer routes get their 401 (and 403 above reader) by themselves."""
    codes = set(errors)
    if role is not None:
        codes.add(401)
        if role != "reader":
            codes.add(403)
    if body is not None:
        codes.update((400, 413, 415))
    if any(p["in"] == "query" for p in params):
        codes.add(400)  # a malformed parameter
    responses = dict(answers)
    for code in sorted(codes):
        responses[str(code)] = {"$ref": f"#/components/responses/{PROBLEMS[code][0]}"}
    out: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if description:
        out["description"] = description
    if params:
        out["parameters"] = list(params)
    if body is not None:
        out["requestBody"] = {"required": body_required, "content": body}
    out["responses"] = responses
    out["security"] = security if security is not None else ([{"bearer": []}] if role else [])
    if role is not None:
        out["x-kua-role"] = role
    return out


def registry_paths() -> dict[str, Any]:
    mutation = (APP, IF_MATCH, DRY_RUN)
    written = {"ETag": ETAG}
    changed = ref("Changed")
    changed_or_dry = {"anyOf": [ref("Changed"), ref("DryRun")]}
    return {
        "/api/v1/apps": {
            "get": op(
                "listApps",
                "All entries with their versions",
                "registry",
                {"200": answer("Every registered app", ref("AppList"))},
                role="reader",
            ),
        },
        "/api/v1/apps/{app}": {
            "get": op(
                "getApp",
                "One entry",
                "registry",
                {"200": answer("The entry", ref("App"), {"ETag": {**ETAG, "required": True}})},
                role="reader",
                params=(APP,),
                errors=(404,),
            ),
            "put": op(
                "putApp",
                "Create or replace an entry",
                "registry",
                {
                    "200": answer("Replaced, unchanged, or a dry run", changed_or_dry, written),
                    "201": answer("Created", changed, written),
                },
                role="admin",
                params=(*mutation, IF_NONE_MATCH),
                body=json_content(ref("AppEntryInput")),
                errors=(412, 422, 503),
                description="Validation lists every problem in one 422.",
            ),
            "patch": op(
                "patchApp",
                "Change an entry with a JSON Merge Patch (RFC 7396)",
                "registry",
                {"200": answer("Patched, unchanged, or a dry run", changed_or_dry, written)},
                role="admin",
                params=mutation,
                body=json_content(
                    ref("MergePatch"), "application/merge-patch+json", "application/json"
                ),
                errors=(404, 412, 422, 503),
            ),
            "delete": op(
                "deleteApp",
                "Remove an entry",
                "registry",
                {"200": answer("Removed, or a dry run", changed_or_dry)},
                role="admin",
                params=mutation,
                errors=(404, 412, 422, 503),
            ),
        },
        "/api/v1/apps/{app}/history": {
            "get": op(
                "appHistory",
                "Every change of an app: seq, ts, actor, before, after",
                "registry",
                {"200": answer("Its changes, oldest first", ref("History"))},
                role="reader",
                params=(APP,),
                errors=(404,),
            ),
        },
        "/api/v1/registry/export": {
            "get": op(
                "exportRegistry",
                "The registry now or at any past point",
                "registry",
                {"200": answer("The registry and the chain point it is as of", ref("Export"))},
                role="reader",
                errors=(422,),
                params=(
                    param(
                        "at",
                        "query",
                        {
                            "anyOf": [
                                {"type": "integer", "minimum": 1},
                                {"type": "string", "format": "date-time"},
                            ]
                        },
                        "A seq, or an RFC 3339 time: the registry as it was then",
                    ),
                    param(
                        "snapshot",
                        "query",
                        {"type": "boolean"},
                        "Also write DATA_DIR/exports/registry-<ts>-seq<N>.json",
                    ),
                ),
            ),
        },
    }


def ledger_paths() -> dict[str, Any]:
    return {
        "/api/v1/events": {
            "get": op(
                "listEvents",
                "A page of the ledger's events",
                "ledger",
                {"200": answer("Events after `after`", ref("EventsPage"))},
                role="reader",
                errors=(400,),
                params=(
                    param(
                        "after",
                        "query",
                        {"type": "integer", "minimum": 0, "maximum": 2**62},
                        "Events after this seq",
                    ),
                    param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                        "At most this many",
                    ),
                ),
            ),
        },
        "/api/v1/events/stream": {
            "get": op(
                "streamEvents",
                "New events as Server-Sent Events",
                "ledger",
                {"200": {"description": "An endless stream", "content": SSE}},
                role="reader",
                params=(LAST_EVENT_ID, STREAM_AFTER),
                errors=(400,),
            ),
        },
        "/api/v1/audit/verify": {
            "get": op(
                "verifyAudit",
                "Verify the hash chain",
                "audit",
                {"200": answer("Whether the chain verifies", ref("VerifyReport"))},
                role="reader",
                params=(
                    param(
                        "full",
                        "query",
                        {"type": "boolean"},
                        "From event 1 instead of the last verified point",
                    ),
                ),
            ),
        },
        "/api/v1/audit/checkpoint": {
            "get": op(
                "auditCheckpoint",
                "The latest signed checkpoint",
                "audit",
                {
                    "200": {
                        "description": "A C2SP tlog-checkpoint in a signed note",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                role="reader",
                errors=(503,),
            ),
        },
        "/api/v1/audit/proof/inclusion": {
            "get": op(
                "inclusionProof",
                "Proof that event `seq` is in the tree of `size`",
                "audit",
                {
                    "200": answer(
                        "RFC 9162 inclusion proof (leaf index = seq − 1)", ref("InclusionProof")
                    )
                },
                role="reader",
                errors=(400, 422, 503),
                params=(
                    param(
                        "seq",
                        "query",
                        {"type": "integer", "minimum": 1},
                        "The event",
                        required=True,
                    ),
                    param(
                        "size",
                        "query",
                        {"type": "integer", "minimum": 1},
                        "The tree size (default: the latest checkpoint's)",
                    ),
                ),
            ),
        },
        "/api/v1/audit/proof/consistency": {
            "get": op(
                "consistencyProof",
                "Proof that tree `to` extends tree `from`",
                "audit",
                {"200": answer("RFC 9162 consistency proof", ref("ConsistencyProof"))},
                role="reader",
                errors=(400, 422, 503),
                params=(
                    param(
                        "from",
                        "query",
                        {"type": "integer", "minimum": 1},
                        "The older tree size",
                        required=True,
                    ),
                    param(
                        "to",
                        "query",
                        {"type": "integer", "minimum": 1},
                        "The newer tree size (default: the latest checkpoint's)",
                    ),
                ),
            ),
        },
    }


def deploy_paths() -> dict[str, Any]:
    accepted = {
        "202": answer("Queued", ref("DeployAccepted")),
        "200": answer("Nothing to do (`noop`), and why", ref("DeployAccepted")),
    }
    one_deploy = {"200": answer("The deploy", ref("DeployView"))}
    return {
        "/api/v1/apps/{app}/deploy": {
            "post": op(
                "requestDeploy",
                "Deploy an app",
                "deploys",
                accepted,
                role="deployer",
                params=(APP,),
                errors=(404, 422, 503),
                body=json_content(ref("DeployRequest")),
                body_required=False,
                description="An empty body deploys the head of the app's branch.",
            ),
        },
        "/api/v1/apps/{app}/rollback": {
            "post": op(
                "rollbackApp",
                "Redeploy a retained release image, no rebuild",
                "deploys",
                accepted,
                role="deployer",
                params=(APP,),
                errors=(404, 409, 422, 503),
                body=json_content(ref("RollbackRequest")),
                body_required=False,
                description="An empty body rolls back to the previous verified release.",
            ),
        },
        "/api/v1/apps/{app}/progress": {
            "get": op(
                "appProgress",
                "The current or last deploy of an app with its steps",
                "deploys",
                one_deploy,
                role="reader",
                params=(APP,),
                errors=(404,),
            ),
        },
        "/api/v1/apps/{app}/runtime-status": {
            "get": op(
                "runtimeStatus",
                "Last verified release, live container state, drift",
                "deploys",
                {"200": answer("Runtime status", ref("RuntimeStatus"))},
                role="reader",
                params=(APP,),
                errors=(404,),
            ),
        },
        "/api/v1/deploys/{id}": {
            "get": op(
                "getDeploy",
                "One deploy with its steps and outcome",
                "deploys",
                one_deploy,
                role="reader",
                params=(DEPLOY_ID,),
                errors=(404,),
            ),
        },
        "/api/v1/deploys/{id}/stream": {
            "get": op(
                "streamDeploy",
                "A deploy's events as Server-Sent Events, resumable",
                "deploys",
                {"200": {"description": "Until the deploy ends", "content": SSE}},
                role="reader",
                params=(DEPLOY_ID, LAST_EVENT_ID, STREAM_AFTER),
                errors=(400, 404),
            ),
        },
        "/api/v1/deploys/{id}/approve": {
            "post": op(
                "approveDeploy",
                "Release a held migration gate",
                "deploys",
                one_deploy,
                role="admin",
                params=(DEPLOY_ID,),
                errors=(404, 409),
            ),
        },
        "/api/v1/deploys/{id}/cancel": {
            "post": op(
                "cancelDeploy",
                "Cancel a queued or running deploy",
                "deploys",
                one_deploy,
                role="deployer",
                params=(DEPLOY_ID,),
                errors=(404, 409),
            ),
        },
    }


def webhook_paths() -> dict[str, Any]:
    push = {"type": "object", "description": "A Forgejo/Gitea push (or other event) payload"}
    form = {
        "type": "object",
        "properties": {"payload": {"type": "string", "description": "the JSON payload"}},
        "required": ["payload"],
    }
    headers = tuple(
        param(name, "header", {"type": "string"}, text)
        for name, text in (
            ("X-Forgejo-Event", "push, create, delete, release, …"),
            ("X-Gitea-Event", "as X-Forgejo-Event, from Gitea"),
            ("X-Forgejo-Delivery", "the delivery's UUID"),
            ("X-Gitea-Delivery", "as X-Forgejo-Delivery, from Gitea"),
        )
    )

    def hook(op_id: str, forge: str) -> dict[str, Any]:
        return op(
            op_id,
            f"A {forge} webhook delivery",
            "webhooks",
            {
                "202": answer("Deploys enqueued (answered within 1 s)", ref("WebhookAnswer")),
                "200": answer(
                    "Authenticated, nothing deployed: every reason in `ignored`",
                    ref("WebhookAnswer"),
                ),
            },
            params=headers,
            errors=(401,),
            body={
                "application/json": {"schema": push},
                "application/x-www-form-urlencoded": {"schema": form},
            },
            security=[{"forgejoSignature": []}, {"giteaSignature": []}, {"hubSignature": []}],
            description="Signed with HMAC-SHA256 over the raw body; the same delivery id "
            "again answers as the first time. Bodies up to 5 MiB.",
        )

    return {
        "/webhook/forgejo": {"post": hook("forgejoWebhook", "Forgejo")},
        "/webhook/gitea": {"post": hook("giteaWebhook", "Gitea")},
    }


def service_paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": op(
                "healthz",
                "Liveness, version and the ledger's head",
                "service",
                {"200": answer("Up", ref("Health"))},
            ),
        },
        "/metrics": {
            "get": op(
                "metrics",
                "Prometheus metrics",
                "service",
                {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            ),
        },
        "/api/v1/openapi.json": {
            "get": op(
                "openapi",
                "This document",
                "service",
                {"200": answer("OpenAPI 3.1", {"type": "object"})},
            ),
        },
    }


def operations() -> dict[str, Any]:
    return {
        **service_paths(),
        **registry_paths(),
        **ledger_paths(),
        **deploy_paths(),
        **webhook_paths(),
    }
