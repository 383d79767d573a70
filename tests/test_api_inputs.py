"""Every authenticated route's 401/403, the 1 MiB body limit on both sides, and bad
PATCH input: each answered as problem+json, and nothing appended."""

from __future__ import annotations

import re

import pytest

from kuadeploy.http import audit, deploys, ledger, registry
from kuadeploy.http.common import MAX_BODY
from tests.api_support import entry_doc, make_config, running
from tests.test_api_registry import BAD_BRANCHES, PROBLEM, is_problem

ROLES = ("reader", "deployer", "admin")
# Every route that takes a token, straight from the route tables, with the role it needs.
AUTHENTICATED = [
    (route.method, route.path, route.handler.kua_role)
    for table in (registry.routes, ledger.routes, deploys.routes, audit.routes)
    for route in table
    if getattr(route.handler, "kua_role", None)
]


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: {"app": "web"}.get(m[1], "x"), path)


@pytest.fixture
async def api(tmp_path):
    async with running(make_config(tmp_path)) as client:
        await client.call("PUT", "/api/v1/apps/web", json=entry_doc())
        yield client


def test_the_route_tables_were_found():
    assert len(AUTHENTICATED) >= 20
    assert {role for *_, role in AUTHENTICATED} == set(ROLES)


async def test_every_authenticated_route_refuses_a_missing_or_unknown_token(api):
    for method, path, _role in AUTHENTICATED:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "t-admin"}):
            status, body, resp = await api.call(
                method, concrete(path), role=None, headers=headers, data=b"{}"
            )
            assert is_problem(resp, body, 401), (method, path, headers, status, body)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert await api.head_seq() == 1


async def test_every_route_refuses_a_role_below_its_own(api):
    for method, path, role in AUTHENTICATED:
        for weaker in ROLES[: ROLES.index(role)]:
            status, body, resp = await api.call(
                method,
                concrete(path),
                role=weaker,
                data=b"{}",
                headers={"Content-Type": "application/json"},
            )
            assert is_problem(resp, body, 403), (method, path, weaker, status, body)
    assert await api.head_seq() == 1


def padded(doc_bytes: bytes, size: int) -> bytes:
    """The same JSON document, `size` bytes long (whitespace is insignificant)."""
    assert len(doc_bytes) <= size
    return doc_bytes[:-1] + b" " * (size - len(doc_bytes)) + doc_bytes[-1:]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_the_body_limit_is_exactly_one_mebibyte(api, method):
    doc = b'{"branch": "dev"}' if method == "PATCH" else b'{"server": "local", "branch": "dev",'
    if method == "PUT":
        doc += b' "repo": "https://forge.example.org/infra/web.git"}'
    json_ = {"Content-Type": "application/json"}
    status, body, resp = await api.call(
        method, "/api/v1/apps/web", data=padded(doc, MAX_BODY + 1), headers=json_
    )
    assert is_problem(resp, body, 413), (status, body)
    assert await api.head_seq() == 1

    async def chunks():  # no Content-Length: the limit must hold for what is read
        yield padded(doc, MAX_BODY + 1)

    status, body, resp = await api.call(method, "/api/v1/apps/web", data=chunks(), headers=json_)
    assert "Content-Length" not in resp.request_info.headers
    assert is_problem(resp, body, 413), (status, body)
    assert await api.head_seq() == 1
    status, body, _ = await api.call(
        method, "/api/v1/apps/web", data=padded(doc, MAX_BODY), headers=json_
    )
    assert status == 200 and body["entry"]["branch"] == "dev", body
    assert await api.head_seq() == 2


async def test_a_chunked_body_past_every_limit_is_a_problem_too(api):
    async def chunks():
        for _ in range(6):
            yield b" " * MAX_BODY

    status, body, resp = await api.call(
        "PATCH", "/api/v1/apps/web", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert is_problem(resp, body, 413), (status, body)
    assert await api.head_seq() == 1


@pytest.mark.parametrize("branch", BAD_BRANCHES)
async def test_a_patch_with_a_bad_branch_appends_nothing(api, branch):
    _status, body, resp = await api.call("PATCH", "/api/v1/apps/web", json={"branch": branch})
    assert is_problem(resp, body, 422), branch
    assert {e["path"] for e in body["errors"]} == {"$.branch"}
    assert await api.head_seq() == 1


@pytest.mark.parametrize(
    ("patch", "paths"),
    [
        ({"server": "nowhere"}, ["$.server"]),
        ({"dockerfile": "../../etc/passwd"}, ["$.dockerfile"]),
        ({"context": "/abs"}, ["$.context"]),
        ({"surprise": 1}, ["$.surprise"]),
        ({"keep_releases": "5"}, ["$.keep_releases"]),
        ({"container": {"restart": "sometimes"}}, ["$.container.restart"]),
        ({"repo": None}, ["$.repo"]),  # merge patch null removes a required field
        ({"server": "nowhere", "branch": "a..b"}, ["$.branch", "$.server"]),
    ],
)
async def test_a_patch_that_breaks_a_rule_appends_nothing(api, patch, paths):
    _status, body, resp = await api.call("PATCH", "/api/v1/apps/web", json=patch)
    assert is_problem(resp, body, 422), (patch, body)
    assert sorted(e["path"] for e in body["errors"]) == paths, body
    assert await api.head_seq() == 1
    _, now, _ = await api.call("GET", "/api/v1/apps/web")
    assert now["version"] == 1 and now["entry"]["branch"] == "main"


@pytest.mark.parametrize(
    ("data", "status"),
    [(b'{"branch": ', 400), (b"\xff\xfe", 400), (b"[]", 422), (b'"x"', 422), (b"7", 422)],
)
async def test_a_patch_that_is_not_a_json_object_appends_nothing(api, data, status):
    _, body, resp = await api.call(
        "PATCH", "/api/v1/apps/web", data=data, headers={"Content-Type": "application/json"}
    )
    assert is_problem(resp, body, status), (data, body)
    assert await api.head_seq() == 1


async def test_the_bearer_scheme_is_case_insensitive(api):
    for scheme in ("bearer", "BEARER", "Bearer"):
        headers = {"Authorization": f"{scheme} t-reader"}
        status, _, _ = await api.call("GET", "/api/v1/apps/web", role=None, headers=headers)
        assert status == 200, scheme


@pytest.mark.parametrize("name", ["evil%0A", "web%0A", "a%0D", "%0Aweb"])
async def test_an_app_name_with_a_line_break_is_refused(api, name):
    status, body, resp = await api.call("PUT", f"/api/v1/apps/{name}", json=entry_doc())
    assert resp.status in (404, 422) and resp.content_type == PROBLEM, (name, status, body)
    assert await api.head_seq() == 1
    _, listed, _ = await api.call("GET", "/api/v1/apps")
    assert [a["app"] for a in listed["apps"]] == ["web"]


async def test_head_is_not_a_branch(api):
    _status, body, resp = await api.call("PATCH", "/api/v1/apps/web", json={"branch": "HEAD"})
    assert is_problem(resp, body, 422) and body["errors"][0]["path"] == "$.branch"
    assert await api.head_seq() == 1


@pytest.mark.parametrize("ref", ["-x", "a;rm -rf /", "a..b", "HEAD", "a b", "x.lock"])
async def test_a_deploy_of_a_bad_ref_is_refused(api, ref):
    status, body, resp = await api.call(
        "POST", "/api/v1/apps/web/deploy", json={"ref": ref, "force": True}, role="deployer"
    )
    assert is_problem(resp, body, 422), (ref, status, body)
    assert body["errors"][0]["path"] == "$.ref"
    assert await api.head_seq() == 1


@pytest.mark.parametrize("sha", ["abcd\n", "abcd\r"])
async def test_a_deploy_of_a_sha_with_a_line_break_is_refused(api, sha):
    status, body, resp = await api.call(
        "POST", "/api/v1/apps/web/deploy", json={"sha": sha}, role="deployer"
    )
    assert is_problem(resp, body, 422), (sha, status, body)
    assert await api.head_seq() == 1


async def test_a_bad_name_is_listed_with_the_entrys_own_problems(api):
    doc = entry_doc("a..b", server="nowhere")
    _status, body, resp = await api.call("PUT", "/api/v1/apps/UPPER", json=doc)
    assert is_problem(resp, body, 422)
    assert [e["path"] for e in body["errors"]] == ["app", "$.branch", "$.server"], body
    assert await api.head_seq() == 1


async def test_two_apps_cannot_share_a_container_on_one_server(api):
    """They would replace each other's container on every deploy."""
    taken = "$.container.name"
    _, body, resp = await api.call(
        "PUT", "/api/v1/apps/api", json=entry_doc(container={"name": "web"})
    )
    assert is_problem(resp, body, 422) and [e["path"] for e in body["errors"]] == [taken]
    assert "app 'web'" in body["errors"][0]["message"]
    status, _, _ = await api.call("PUT", "/api/v1/apps/api", json=entry_doc())
    assert status == 201  # its own name is free
    _, body, resp = await api.call("PATCH", "/api/v1/apps/web", json={"container": {"name": "api"}})
    assert is_problem(resp, body, 422) and [e["path"] for e in body["errors"]] == [taken]
    assert await api.head_seq() == 2
    status, _, _ = await api.call(
        "PATCH", "/api/v1/apps/web", json={"container": {"env": {"A": "1"}}}
    )
    assert status == 200  # unrelated changes to an entry are not held up
    await api.call("DELETE", "/api/v1/apps/api")
    status, _, _ = await api.call("PATCH", "/api/v1/apps/web", json={"container": {"name": "api"}})
    assert status == 200  # free again once that app is removed
