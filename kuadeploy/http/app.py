"""The aiohttp application: one middleware for auth, problems, metrics and logging."""

from __future__ import annotations

import time

from aiohttp import web

from kuadeploy.errors import ApiError
from kuadeploy.http import audit as audit_routes
from kuadeploy.http import deploys as deploy_routes
from kuadeploy.http import ledger as ledger_routes
from kuadeploy.http import openapi as openapi_routes
from kuadeploy.http import registry as registry_routes
from kuadeploy.http import webhook as webhook_routes
from kuadeploy.http.access import AccessLog
from kuadeploy.http.common import PRINCIPAL, SERVICE, Handler, problem_response
from kuadeploy.http.metrics import Metrics
from kuadeploy.service import Service
from kuadeploy.tokens import Principal

METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access_log", AccessLog)
# The largest body any route takes (webhooks); each route checks its own limit.
CLIENT_MAX_SIZE = 5 * 1024 * 1024 + 1


@web.middleware
async def front(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authentication, problem+json for every error (RFC 9457), metrics and one JSON
    access-log line per request (never a token). One layer, not three: each
    middleware layer costs a few µs, which is a third of a whole GET."""
    started = time.perf_counter()
    who = None
    try:
        role = getattr(request.match_info.handler, "kua_role", None)
        if role is not None:
            who = _authenticate(request, role)
        response = await handler(request)
    except ApiError as exc:
        response = problem_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            _observe(request, exc.status, started, who)
            raise
        text = exc.text
        detail = text if text and not text.startswith(f"{exc.status}:") else exc.reason
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        response = problem_response(ApiError(exc.status, exc.reason, detail), keep)
    except BaseException:
        _observe(request, 500, started, who)
        raise
    _observe(request, response.status, started, who)
    return response


def _authenticate(request: web.Request, role: str) -> Principal:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    who = request.app[SERVICE].tokens.authenticate(token.strip()) if scheme == "Bearer" else None
    if who is None:
        raise ApiError(401, "Unauthorized", "a valid bearer token is required")
    request[PRINCIPAL] = who
    if not who.can(role):
        raise ApiError(403, "Forbidden", f"{who.actor} is {who.role}; this needs {role}")
    return who


def _observe(request: web.Request, status: int, started: float, who: Principal | None) -> None:
    elapsed = time.perf_counter() - started
    resource = request.match_info.route.resource
    name = resource.canonical if resource is not None else "unmatched"
    method = request.method
    request.app[METRICS].observe_request(name, method, status, elapsed)
    actor = who.actor if who else None
    request.app[ACCESS_LOG].record(method, request.path, status, round(elapsed * 1000, 2), actor)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics, svc = request.app[METRICS], request.app[SERVICE]
    metrics.head_seq.set(svc.ledger.head.seq)
    metrics.count_sink_failures(svc.sink_failures())
    if svc.last_verify is not None:
        metrics.verify_ok.set(1 if svc.last_verify.ok else 0)
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})


def make_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[front], client_max_size=CLIENT_MAX_SIZE)
    app[SERVICE] = service
    metrics = Metrics()
    app[METRICS] = metrics
    app[ACCESS_LOG] = AccessLog()
    service.ledger.subscribe(lambda batch: metrics.observe_batch(len(batch)))
    app.router.add_get("/metrics", metrics_handler)
    registry_routes.setup(app)  # first: the router tries dynamic routes in order
    app.add_routes(ledger_routes.routes)
    app.add_routes(deploy_routes.routes)
    app.add_routes(audit_routes.routes)
    app.add_routes(openapi_routes.routes)
    webhook_routes.setup(app, service, metrics)

    async def on_shutdown(_app: web.Application) -> None:
        service.notifier.close()

    app.on_shutdown.append(on_shutdown)
    return app
