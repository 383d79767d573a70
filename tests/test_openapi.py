"""The OpenAPI document: valid OpenAPI 3.1, covering every route the app registers with the
role its handler requires, and — fuzzed by schemathesis — true of the running server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis import checks

from tests.api_support import TOKENS, make_config
from tests.live_server import LiveServer

DOC = "/api/v1/openapi.json"
METHODS = ("get", "put", "post", "patch", "delete")
# Endless Server-Sent Events streams: described, never fuzzed.
STREAMS = {"/api/v1/events/stream", "/api/v1/deploys/{id}/stream"}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(make_config(tmp_path_factory.mktemp("openapi"))) as server:
        yield server


@pytest.fixture(scope="module")
def document(live: LiveServer) -> dict:
    response = requests.get(live.url + DOC, timeout=10)  # no token: the document is public
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def registered(live: LiveServer) -> set[tuple[str, str]]:
    """(method, path) of every route of the real app; HEAD goes with GET."""
    assert live.app is not None
    return {
        (route.method.lower(), route.resource.canonical)
        for route in live.app.router.routes()
        if route.method != "HEAD" and route.resource is not None and route.method != "*"
    }  # "*": the catch-all that answers 404/405 problems


def test_document_is_valid_openapi_3_1(document: dict) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_registered_route_is_documented(live: LiveServer, document: dict) -> None:
    documented = {(m, path) for path, item in document["paths"].items() for m in item}
    missing = registered(live) - documented
    assert not missing, f"routes missing from the OpenAPI document: {sorted(missing)}"


def test_every_design_route_is_documented(document: dict) -> None:
    """DESIGN §4, including the routes other issues are still building."""
    design = {
        ("get", "/healthz"), ("get", "/metrics"), ("get", DOC),
        ("get", "/api/v1/apps"), ("get", "/api/v1/apps/{app}"), ("put", "/api/v1/apps/{app}"),
        ("patch", "/api/v1/apps/{app}"), ("delete", "/api/v1/apps/{app}"),
        ("get", "/api/v1/apps/{app}/history"), ("get", "/api/v1/registry/export"),
        ("get", "/api/v1/events"), ("get", "/api/v1/events/stream"),
        ("get", "/api/v1/audit/verify"), ("post", "/api/v1/apps/{app}/deploy"),
        ("get", "/api/v1/apps/{app}/progress"), ("get", "/api/v1/apps/{app}/runtime-status"),
        ("get", "/api/v1/deploys/{id}"), ("get", "/api/v1/deploys/{id}/stream"),
        ("post", "/api/v1/deploys/{id}/approve"), ("post", "/api/v1/deploys/{id}/cancel"),
        ("post", "/api/v1/apps/{app}/rollback"), ("post", "/webhook/forgejo"),
        ("post", "/webhook/gitea"), ("get", "/api/v1/audit/checkpoint"),
        ("get", "/api/v1/audit/proof/inclusion"), ("get", "/api/v1/audit/proof/consistency"),
    }  # fmt: skip
    documented = {(m, path) for path, item in document["paths"].items() for m in item}
    assert design <= documented, sorted(design - documented)


def test_roles_and_security_match_the_handlers(live: LiveServer, document: dict) -> None:
    assert live.app is not None
    for route in live.app.router.routes():
        if route.method in ("HEAD", "*"):
            continue  # HEAD mirrors GET; "*" is the catch-all for 404/405 problems
        op = document["paths"][route.resource.canonical][route.method.lower()]
        role = getattr(route.handler, "kua_role", None)
        assert op.get("x-kua-role") == role, (route.method, route.resource.canonical)
        signed = route.resource.canonical.startswith("/webhook/")  # HMAC, not a bearer role
        assert ("401" in op["responses"]) == (role is not None or signed)
        assert ("403" in op["responses"]) == (role not in (None, "reader"))
        if role is None:
            assert op["security"] in ([], [{"forgejoSignature": []}, {"giteaSignature": []},
                                           {"hubSignature": []}])  # fmt: skip
        else:
            assert op["security"] == [{"bearer": []}]


def test_every_operation_lists_its_problems_as_problem_json(document: dict) -> None:
    problems = document["components"]["responses"]
    for path, item in document["paths"].items():
        for method, op in item.items():
            assert method in METHODS, (method, path)
            for code, response in op["responses"].items():
                if int(code) >= 400:
                    name = response["$ref"].rsplit("/", 1)[1]
                    assert "application/problem+json" in problems[name]["content"]
            if "requestBody" in op:
                assert {"400", "413", "415"} <= set(op["responses"]), (method, path)


# --- schemathesis against the running server ------------------------------------------


@pytest.fixture(scope="module")
def full_schema(live: LiveServer, document: dict):
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=live.url)
    return schema


def conforming(schema, method: str, path: str, *, expect: int, **case) -> dict:
    """Call one operation as documented; the answer must conform to the document."""
    operation = schema[path][method]
    response = operation.Case(**case).call_and_validate(
        headers={"Authorization": f"Bearer {TOKENS['admin']}"}, checks=CHECKS, timeout=10
    )
    assert response.status_code == expect, response.text
    return response.json()


def test_deploy_answers_conform(full_schema, tmp_path) -> None:
    """Random input rarely reaches a real deploy: walk one through its states. The repo
    does not exist and the engine is down, so it fails at once, on this machine."""
    app = {"app": "conform"}
    entry = {"server": "local", "repo": str(tmp_path / "missing.git"), "branch": "main"}
    conforming(full_schema, "PUT", "/api/v1/apps/{app}", expect=201, path_parameters=app,
               body=entry, media_type="application/json")  # fmt: skip
    queued = conforming(full_schema, "POST", "/api/v1/apps/{app}/deploy", expect=202,
                        path_parameters=app, body={}, media_type="application/json")  # fmt: skip
    one = {"id": queued["deploy_id"]}
    for _ in range(100):
        view = conforming(full_schema, "GET", "/api/v1/deploys/{id}", expect=200,
                          path_parameters=one)  # fmt: skip
        if view["status"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    assert view["status"] == "failed", view
    conforming(full_schema, "GET", "/api/v1/apps/{app}/progress", expect=200, path_parameters=app)
    status = conforming(full_schema, "GET", "/api/v1/apps/{app}/runtime-status", expect=200,
                        path_parameters=app)  # fmt: skip
    assert status["drift"] is None and status["engine_error"]
    conforming(full_schema, "POST", "/api/v1/deploys/{id}/approve", expect=409,
               path_parameters=one)  # fmt: skip
    conforming(full_schema, "POST", "/api/v1/deploys/{id}/cancel", expect=409,
               path_parameters=one)  # fmt: skip
    conforming(full_schema, "POST", "/api/v1/apps/{app}/rollback", expect=409,
               path_parameters=app, body={}, media_type="application/json")  # fmt: skip
    page = conforming(full_schema, "GET", "/api/v1/events", expect=200, query={"limit": 1000})
    assert {"DeployRequested", "DeployFailed"} <= {e["type"] for e in page["events"]}


@pytest.fixture(scope="module")
def fuzz_schema(live: LiveServer, document: dict):
    """The served document, less what the server does not have yet (it would only 404)
    and the endless SSE streams."""
    fuzzable = {(m, p) for m, p in registered(live) if p not in STREAMS}
    paths = {
        path: {m: op for m, op in item.items() if (m, path) in fuzzable}
        for path, item in document["paths"].items()
    }
    doc = {**document, "paths": {p: item for p, item in paths.items() if item}}
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=live.url)
    return schema


fuzz = schemathesis.pytest.from_fixture("fuzz_schema")


@fuzz.parametrize()
@settings(
    max_examples=25,
    deadline=5000,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    print_blob=True,
)
def test_server_conforms_to_the_document(case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKENS['admin']}"}, checks=CHECKS, timeout=10
    )
