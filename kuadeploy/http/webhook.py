"""POST /webhook/forgejo (alias /webhook/gitea): verify, parse, hand over, answer.

A delivery that does not verify is answered 401 and never reaches the ledger (a
stranger must not be able to grow it); it is only counted and logged. Everything
that verifies is recorded, whether it deploys or not.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import msgspec
from aiohttp import web

from kuadeploy.commands.webhooks import Delivery
from kuadeploy.config import WebhookConfig
from kuadeploy.errors import ApiError
from kuadeploy.forge import payload as wire
from kuadeploy.forge import signature as sig
from kuadeploy.forge.receiver import WebhookReceiver
from kuadeploy.http.common import json_response, read_body
from kuadeploy.http.metrics import Metrics
from kuadeploy.jsondoc import MALFORMED_JSON
from kuadeploy.service import Service

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

MAX_BODY = 5 * 1024 * 1024
JSON, FORM = "application/json", "application/x-www-form-urlencoded"
# Both go into the ledger unsigned (the forge signs the body only): keep them plain.
DELIVERY_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")  # a UUID in practice
EVENT = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # push, create, delete, pull_request, …
UNVERIFIED = "the delivery is not signed with a configured webhook secret"


@dataclass(frozen=True)
class Hook:
    receiver: WebhookReceiver
    metrics: Metrics
    config: WebhookConfig


HOOK: web.AppKey[Hook] = web.AppKey("webhook", Hook)


def setup(app: web.Application, service: Service, metrics: Metrics) -> None:
    app[HOOK] = Hook(WebhookReceiver(service), metrics, service.config.webhook)


class Rejected(Exception):
    def __init__(self, reason: str, error: ApiError):
        super().__init__(reason)
        self.reason = reason
        self.error = error


@routes.post("/webhook/forgejo")
@routes.post("/webhook/gitea")
async def receive(request: web.Request) -> web.Response:
    hook = request.app[HOOK]
    try:
        delivery = _delivery(request, hook.config, await _body(request))
    except Rejected as rejected:
        hook.metrics.webhook_rejected.labels(rejected.reason).inc()
        log.warning(
            {
                "msg": "webhook rejected",
                "reason": rejected.reason,
                "status": rejected.error.status,
                "remote": request.remote,
                "delivery": _header(request, "Delivery")[:128],
            }
        )
        raise rejected.error from None
    answer, repeated = await hook.receiver.receive(delivery)
    outcome = "repeated" if repeated else ("deployed" if answer.deploy_ids else "ignored")
    hook.metrics.webhook_deliveries.labels(outcome).inc()
    return json_response(answer.body(), answer.status)


async def _body(request: web.Request) -> bytes:
    try:
        return await read_body(request, MAX_BODY)
    except ApiError as too_large:
        raise Rejected("too_large", too_large) from None
    except web.HTTPRequestEntityTooLarge:  # a chunked body past the app's client_max_size
        detail = f"request body over {MAX_BODY} bytes"
        raise Rejected("too_large", ApiError(413, "Payload too large", detail)) from None


def _delivery(request: web.Request, config: WebhookConfig, body: bytes) -> Delivery:
    """The verified, parsed delivery, or Rejected with the answer to give."""
    signed = _signed_text(request.content_type, body)
    scope, claimed = _verify(request, config, signed)
    event = _header(request, "Event")
    if not EVENT.fullmatch(event):
        detail = "X-Forgejo-Event header missing or not an event name"
        raise Rejected("no_event", ApiError.bad_request(detail))
    delivery_id = _header(request, "Delivery")
    if not DELIVERY_ID.fullmatch(delivery_id):
        detail = "X-Forgejo-Delivery header missing or not a delivery id"
        raise Rejected("no_delivery", ApiError.bad_request(detail))
    try:
        payload = wire.parse(event, signed)
    except msgspec.ValidationError as exc:
        error = ApiError(400, "Bad request", f"not a {event} payload: {exc}")
        raise Rejected("malformed", error) from None
    except MALFORMED_JSON as exc:
        raise Rejected("malformed", ApiError.bad_request(f"malformed JSON: {exc}")) from None
    repo = payload.repository.full_name if payload.repository else None
    if scope == "repo" and repo != claimed:  # the repo secret must sign its own repo only
        raise Rejected("bad_signature", ApiError(401, "Unauthorized", UNVERIFIED))
    forge = "forgejo" if request.headers.get("X-Forgejo-Event") else "gitea"
    return Delivery(delivery_id, event, forge, scope, payload)


def _signed_text(content_type: str, body: bytes) -> bytes:
    """The bytes the forge signed: the body, or a form body's `payload` field."""
    if content_type == JSON:
        return body
    if content_type == FORM:
        text = sig.form_payload(body)
        if text is None:
            error = ApiError.bad_request("form body without a payload field")
            raise Rejected("malformed", error)
        return text
    detail = f"send {JSON} or {FORM}, not {content_type!r}"
    raise Rejected("content_type", ApiError(415, "Unsupported media type", detail))


def _verify(request: web.Request, config: WebhookConfig, signed: bytes) -> tuple[str, str | None]:
    """(which secret verified, the repo the body names); Rejected with 401 otherwise."""

    def unauthorized(reason: str) -> Rejected:
        return Rejected(reason, ApiError(401, "Unauthorized", UNVERIFIED))

    if not sig.configured(config):
        raise unauthorized("no_secret")  # never accept unsigned deliveries
    digests = sig.signatures(request.headers)
    if not digests:
        raise unauthorized("unsigned")
    if not sig.authorization_ok(config, request.headers.get("Authorization")):
        raise unauthorized("authorization")
    claimed = wire.claimed_repo(signed)
    scope = sig.verify(signed, digests, sig.candidate_secrets(config, claimed))
    if scope is None:
        raise unauthorized("bad_signature")
    return scope, claimed


def _header(request: web.Request, name: str) -> str:
    """X-Forgejo-<name>, else X-Gitea-<name> (Gitea sends no X-Forgejo-* headers)."""
    headers = request.headers
    return (headers.get(f"X-Forgejo-{name}") or headers.get(f"X-Gitea-{name}") or "").strip()
