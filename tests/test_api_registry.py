"""Registry API against a real server on 127.0.0.1 with a real data dir."""

from __future__ import annotations

import asyncio
import time

import pytest

from kuadeploy.ledger import reading, store
from kuadeploy.ledger.verify import verify_ledger
from tests.api_support import TOKENS, entry_doc, make_config, running

PROBLEM = "application/problem+json"


@pytest.fixture
async def api(tmp_path):
    async with running(make_config(tmp_path)) as client:
        yield client


def is_problem(resp, body, status: int) -> bool:
    return resp.status == status and resp.content_type == PROBLEM and body["status"] == status


async def test_put_get_patch_delete_happy_path(api):
    status, body, resp = await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    assert status == 201 and body["version"] == 1 and body["seq"] == 1
    assert resp.headers["ETag"] == '"1"'
    assert body["entry"]["dockerfile"] == "Dockerfile"  # defaults are filled in, explicitly
    status, body, resp = await api.call("GET", "/api/v1/apps/web", role="reader")
    assert status == 200 and body["app"] == "web" and resp.headers["ETag"] == '"1"'
    status, body, _ = await api.call(
        "PATCH",
        "/api/v1/apps/web",
        data=b'{"branch": "dev", "container": {"env": {"A": "1"}}}',
        headers={"Content-Type": "application/merge-patch+json", "If-Match": '"1"'},
    )
    assert status == 200 and body["entry"]["branch"] == "dev" and body["version"] == 2
    assert body["entry"]["container"]["env"] == {"A": "1"}
    status, body, _ = await api.call(
        "PATCH", "/api/v1/apps/web", json={"container": {"env": {"A": None}}}
    )
    assert status == 200 and body["entry"]["container"]["env"] == {}
    status, body, _ = await api.call("PUT", "/api/v1/apps/web", json=entry_doc("x"))
    assert status == 200 and body["version"] == 4
    status, body, _ = await api.call("GET", "/api/v1/apps/web")
    assert body["entry"]["branch"] == "x" and body["entry"]["container"]["env"] == {}
    status, body, _ = await api.call("GET", "/api/v1/apps", role="reader")
    assert [a["app"] for a in body["apps"]] == ["web"]
    status, body, _ = await api.call("DELETE", "/api/v1/apps/web", headers={"If-Match": '"4"'})
    assert status == 200 and body == {"app": "web", "version": 5, "removed": True, "seq": 5}
    status, body, resp = await api.call("GET", "/api/v1/apps/web")
    assert is_problem(resp, body, 404)


async def test_unchanged_entry_appends_nothing_and_says_so(api):
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    status, body, _ = await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    assert status == 200 and body["unchanged"] is True and body["version"] == 1
    status, body, _ = await api.call("PATCH", "/api/v1/apps/web", json={"branch": "main"})
    assert status == 200 and body["unchanged"] is True
    assert await api.head_seq() == 1


async def test_status_codes_are_problem_json(api):
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    cases = [
        ("GET", "/api/v1/apps/web", None, {}, 401),  # no token
        ("GET", "/api/v1/apps/web", None, {"Authorization": "Bearer nope"}, 401),
        ("GET", "/api/v1/apps/web", None, {"Authorization": "Basic dDp0"}, 401),
        ("PUT", "/api/v1/apps/web", "reader", {}, 403),
        ("PUT", "/api/v1/apps/web", "deployer", {}, 403),
        ("DELETE", "/api/v1/apps/web", "deployer", {}, 403),
        ("GET", "/api/v1/apps/nope", "reader", {}, 404),
        ("PATCH", "/api/v1/apps/nope", "admin", {"Content-Type": "application/json"}, 404),
        ("DELETE", "/api/v1/apps/nope", "admin", {}, 404),
        ("GET", "/api/v1/apps/nope/history", "reader", {}, 404),
        ("DELETE", "/api/v1/apps/web", "admin", {"If-Match": '"7"'}, 412),
        ("PUT", "/api/v1/apps/web", "admin", {"If-None-Match": "*"}, 412),
        ("PUT", "/api/v1/apps/web", "admin", {"Content-Type": "text/plain"}, 415),
        ("PATCH", "/api/v1/apps/web", "admin", {"Content-Type": "application/xml"}, 415),
    ]
    for method, path, role, headers, expected in cases:
        data = b"{}" if method in ("PUT", "PATCH") else None
        hdrs = {"Content-Type": "application/json", **headers} if data else headers
        status, body, resp = await api.call(method, path, role=role, data=data, headers=hdrs)
        assert is_problem(resp, body, expected), (method, path, headers, status, body)
    status, body, resp = await api.call(
        "PUT", "/api/v1/apps/web", data=b'{"server": ', headers={"Content-Type": "application/json"}
    )
    assert is_problem(resp, body, 400) and "malformed JSON" in body["detail"]
    big = b'{"x": "' + b"a" * (1024 * 1024) + b'"}'
    status, body, resp = await api.call(
        "PUT", "/api/v1/apps/web", data=big, headers={"Content-Type": "application/json"}
    )
    assert is_problem(resp, body, 413)
    status, body, resp = await api.call("GET", "/api/v1/nothing-here", role="reader")
    assert is_problem(resp, body, 404)
    status, body, resp = await api.call("POST", "/api/v1/apps/web", role="admin")
    assert is_problem(resp, body, 405)
    assert set(resp.headers["Allow"].split(",")) >= {"GET", "PUT", "PATCH", "DELETE"}
    status, body, resp = await api.call("POST", "/api/v1/nothing-here", role=None)
    assert is_problem(resp, body, 404)
    assert await api.head_seq() == 1


async def test_422_lists_every_problem(api):
    doc = {
        "server": "elsewhere",
        "repo": 7,
        "branch": "a..b",
        "dockerfile": "../../etc/passwd",
        "surprise": True,
        "container": {"restart": "sometimes"},
    }
    _status, body, resp = await api.call("PUT", "/api/v1/apps/web", json=doc)
    assert is_problem(resp, body, 422)
    paths = [e["path"] for e in body["errors"]]
    assert paths == [
        "$.branch",
        "$.container.restart",
        "$.dockerfile",
        "$.repo",
        "$.server",
        "$.surprise",
    ]
    assert body["detail"] == "6 problems found"
    assert await api.head_seq() == 0


BAD_NAMES = ["..%2f..", "UPPER", "a" * 80, "-lead", "a_b", "%2e%2e"]
BAD_BRANCHES = ["-x", "a;rm -rf /", "a..b", "a@{1}", "x.lock", "a b", "b" * 10_000, "a/", ".x"]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_app_names_append_nothing(api, name):
    status, body, resp = await api.call("PUT", f"/api/v1/apps/{name}", json=entry_doc())
    assert resp.status in (404, 422) and resp.content_type == PROBLEM, (name, status, body)
    assert await api.head_seq() == 0


@pytest.mark.parametrize("branch", BAD_BRANCHES)
async def test_bad_branches_append_nothing(api, branch):
    _status, body, resp = await api.call("PUT", "/api/v1/apps/web", json=entry_doc(branch))
    assert is_problem(resp, body, 422), branch
    assert body["errors"][0]["path"] == "$.branch"
    assert await api.head_seq() == 0


@pytest.mark.parametrize(
    "doc",
    [
        entry_doc(server="nowhere"),
        entry_doc(unknown_field=1),
        entry_doc(dockerfile="../../etc/passwd"),
        entry_doc(context="/abs"),
        entry_doc(keep_releases="5"),
        entry_doc(verify={"timeout_s": "soon"}),
        {"server": "local"},
        [],
        "string",
    ],
)
async def test_bad_entries_append_nothing(api, doc):
    _status, body, resp = await api.call("PUT", "/api/v1/apps/web", json=doc)
    assert is_problem(resp, body, 422), doc
    assert await api.head_seq() == 0


async def test_dry_runs_write_nothing_and_predict_the_real_result(api):
    status, dry, _ = await api.call("PUT", "/api/v1/apps/web?dry_run=1", json=entry_doc())
    assert status == 200 and dry["dry_run"] is True and dry["before"] is None
    assert dry["diff"] == [{"op": "add", "path": "", "value": dry["after"]}]
    assert await api.head_seq() == 0
    _, real, _ = await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    assert real["entry"] == dry["after"]

    patch = {"branch": "dev", "container": {"env": {"K": "v"}}}
    _, dry, _ = await api.call("PATCH", "/api/v1/apps/web?dry_run=1", json=patch)
    assert {"op": "replace", "path": "/branch", "value": "dev"} in dry["diff"]
    assert {"op": "add", "path": "/container/env/K", "value": "v"} in dry["diff"]
    assert await api.head_seq() == 1
    _, real, _ = await api.call("PATCH", "/api/v1/apps/web", json=patch)
    assert real["entry"] == dry["after"]

    _, stored, _ = await api.call("GET", "/api/v1/apps/web")
    assert stored["entry"] == dry["after"]

    _, dry, _ = await api.call("PUT", "/api/v1/apps/web?dry_run=1", json=entry_doc("rel"))
    assert dry["before"] == stored["entry"] and dry["after"]["branch"] == "rel"
    assert {"op": "replace", "path": "/branch", "value": "rel"} in dry["diff"]
    assert {"op": "remove", "path": "/container/env/K"} in dry["diff"]  # PUT replaces it all
    assert await api.head_seq() == 2
    _, real, _ = await api.call("PUT", "/api/v1/apps/web", json=entry_doc("rel"))
    _, stored, _ = await api.call("GET", "/api/v1/apps/web")
    assert real["entry"] == stored["entry"] == dry["after"]

    _, dry, _ = await api.call("DELETE", "/api/v1/apps/web?dry_run=1")
    assert dry["before"] == stored["entry"] and dry["after"] is None
    assert dry["diff"] == [{"op": "remove", "path": ""}]
    assert await api.head_seq() == 3
    status, _, _ = await api.call("GET", "/api/v1/apps/web")
    assert status == 200
    status, real, _ = await api.call("DELETE", "/api/v1/apps/web")
    assert status == 200 and real["removed"] is True and await api.head_seq() == 4
    status, _, _ = await api.call("GET", "/api/v1/apps/web")
    assert status == 404


@pytest.mark.parametrize(
    "query", ["dry_run", "dry_run=", "dry_run=on", "dry_run=TRUE", "x=1&dry_run"]
)
@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_every_spelling_of_dry_run_writes_nothing(api, method, query):
    # `?dry_run` alone went ahead as a real write: only 1/true/yes counted
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    doc = {"PUT": entry_doc("rel"), "PATCH": {"branch": "rel"}, "DELETE": None}[method]
    status, dry, _ = await api.call(method, f"/api/v1/apps/web?{query}", json=doc)
    assert status == 200 and dry["dry_run"] is True, dry
    assert await api.head_seq() == 1


@pytest.mark.parametrize("value", ["maybe", "2", "yes please"])
async def test_a_dry_run_value_that_means_neither_is_400_and_writes_nothing(api, value):
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    for method, doc in (("PATCH", {"branch": "rel"}), ("DELETE", None)):
        status, body, resp = await api.call(method, f"/api/v1/apps/web?dry_run={value}", json=doc)
        assert is_problem(resp, body, 400), body
        assert "dry_run" in body["detail"]
    status, body, _ = await api.call("GET", "/api/v1/audit/verify?full=maybe", role="reader")
    assert status == 400, body
    assert await api.head_seq() == 1


async def test_if_none_match_creates_only(api):
    hdrs = {"If-None-Match": "*"}
    status, _, _ = await api.call("PUT", "/api/v1/apps/web", json=entry_doc(), headers=hdrs)
    assert status == 201
    status, _, _ = await api.call("PUT", "/api/v1/apps/web", json=entry_doc("x"), headers=hdrs)
    assert status == 412
    await api.call("DELETE", "/api/v1/apps/web")
    status, body, _ = await api.call("PUT", "/api/v1/apps/web", json=entry_doc(), headers=hdrs)
    assert status == 201 and body["version"] == 3  # the stream goes on across delete


def slow_commits(api, monkeypatch) -> dict[str, int]:
    """Commits take 2 ms on the commit thread, so requests overlap for sure (on a fast
    disk a lone append commits inline, and one PATCH would end before the next began).
    Returns the most PATCHes seen in flight at once."""
    real = store._insert_rows

    def slow(conn, rows):
        time.sleep(0.002)
        return real(conn, rows)

    monkeypatch.setattr(store, "_insert_rows", slow)
    api.service.ledger._threaded = True
    seen = {"now": 0, "max": 0}
    patch_app = api.service.patch_app

    async def counted(*args, **kwargs):
        seen["now"] += 1
        seen["max"] = max(seen["max"], seen["now"])
        try:
            return await patch_app(*args, **kwargs)
        finally:
            seen["now"] -= 1

    monkeypatch.setattr(api.service, "patch_app", counted)
    return seen


@pytest.mark.parametrize(
    ("if_match", "status"),
    [('"1"', 200), ('"7", "1"', 200), ("*", 200), ('W/"1"', 412), ('"2"', 412), ("W/*", 412)],
)
async def test_if_match_compares_strongly(api, if_match, status):
    # RFC 9110 §13.1.1: If-Match uses the strong comparison, a weak tag never matches
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    hdrs = {"If-Match": if_match}
    got, body, _ = await api.call("PATCH", "/api/v1/apps/web", json={"branch": "x"}, headers=hdrs)
    assert got == status, body
    assert await api.head_seq() == (2 if status == 200 else 1)


@pytest.mark.parametrize(
    ("if_none_match", "status"),
    [
        ("*", 412),
        ('"1"', 412),
        ('W/"1"', 412),
        ('"5", "1"', 412),
        ('"2"', 200),
        ('"2", W/"3"', 200),
    ],
)
async def test_if_none_match_with_etags_guards_a_put(api, if_none_match, status):
    # only `*` was honoured: a list of tags was ignored and the PUT went ahead
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    hdrs = {"If-None-Match": if_none_match}
    got, body, _ = await api.call("PUT", "/api/v1/apps/web", json=entry_doc("x"), headers=hdrs)
    assert got == status, body
    assert await api.head_seq() == (2 if status == 200 else 1)


async def test_hundred_concurrent_patches_with_the_same_if_match(api, monkeypatch):
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    seen = slow_commits(api, monkeypatch)

    async def patch(i: int):
        return await api.call(
            "PATCH",
            "/api/v1/apps/web",
            json={"container": {"env": {f"K{i}": str(i)}}},
            headers={"If-Match": '"1"'},
        )

    results = await asyncio.gather(*(patch(i) for i in range(100)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [200] + [412] * 99
    winner = next(r[1] for r in results if r[0] == 200)
    _, now, _ = await api.call("GET", "/api/v1/apps/web")
    assert now["version"] == 2 and now["entry"] == winner["entry"]  # no lost update
    assert await api.head_seq() == 2
    assert seen["max"] > 10  # they did overlap
    conn = reading.open_readonly(api.service.config.ledger_path)
    assert verify_ledger(conn).ok
    conn.close()


async def test_concurrent_patches_without_if_match_all_apply(api):
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    results = await asyncio.gather(
        *(
            api.call("PATCH", "/api/v1/apps/web", json={"container": {"env": {f"K{i}": "v"}}})
            for i in range(30)
        )
    )
    assert all(r[0] == 200 for r in results)
    _, now, _ = await api.call("GET", "/api/v1/apps/web")
    assert len(now["entry"]["container"]["env"]) == 30 and now["version"] == 31


async def test_history_across_delete_and_recreate(api):
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    await api.call("PATCH", "/api/v1/apps/web", json={"branch": "dev"})
    await api.call("DELETE", "/api/v1/apps/web")
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc("again"))
    status, body, _ = await api.call("GET", "/api/v1/apps/web/history", role="reader")
    assert status == 200
    changes = body["changes"]
    assert [c["type"] for c in changes] == [
        "AppRegistered",
        "AppPatched",
        "AppRemoved",
        "AppRegistered",
    ]
    assert [c["seq"] for c in changes] == [1, 2, 3, 4]
    assert all(c["actor"] == "admin" and c["ts"].endswith("Z") for c in changes)
    assert changes[0]["before"] is None and changes[1]["before"]["branch"] == "main"
    assert changes[1]["after"]["branch"] == "dev" and changes[2]["after"] is None
    assert changes[3]["before"] is None and changes[3]["after"]["branch"] == "again"


async def test_tokens_added_by_the_cli_work_without_restart(api, tmp_path):
    from kuadeploy.tokens import add_token

    token = add_token(str(tmp_path), "ci-bot", "deployer")
    status, _body, _ = await api.call(
        "GET", "/api/v1/apps", role=None, headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200
    status, _, _ = await api.call(
        "PUT",
        "/api/v1/apps/web",
        role=None,
        json=entry_doc(),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert status == 403
    assert token not in (tmp_path / "tokens.json").read_text()
    assert TOKENS["admin"] not in (tmp_path / "tokens.json").read_text()


BAD_HASH = '{"tokens":[{"actor":"x","role":"reader","sha256":"zz"}]}'


@pytest.mark.parametrize("bad", ["{garbled", BAD_HASH])
async def test_a_token_file_broken_while_serving_drops_its_tokens_not_the_server(
    api, tmp_path, bad
):
    from kuadeploy.tokens import add_token

    token = add_token(str(tmp_path), "ci-bot", "deployer")
    auth = {"Authorization": f"Bearer {token}"}
    assert (await api.call("GET", "/api/v1/apps", role=None, headers=auth))[0] == 200
    (tmp_path / "tokens.json").write_text(bad)  # a bad hand edit
    api.service.tokens.RECHECK_S = 0
    for _ in range(2):
        status, body, _ = await api.call("GET", "/api/v1/apps", role=None, headers=auth)
        assert status == 401, body  # fail closed: the edit may have meant to revoke it
        status, body, _ = await api.call("GET", "/api/v1/apps", role="reader")
        assert status == 200, body  # the config's tokens still work


async def test_hundred_concurrent_unconditional_patches_all_apply(api, monkeypatch):
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    seen = slow_commits(api, monkeypatch)
    results = await asyncio.gather(
        *(
            api.call("PATCH", "/api/v1/apps/web", json={"container": {"env": {f"K{i}": "v"}}})
            for i in range(100)
        )
    )
    assert [r[0] for r in results] == [200] * 100
    _, now, _ = await api.call("GET", "/api/v1/apps/web")
    assert len(now["entry"]["container"]["env"]) == 100 and now["version"] == 101
    assert seen["max"] > 10


async def test_concurrent_deploy_requests_for_one_sha_queue_one_deploy(api, tmp_path):
    # the repository does not exist: the deploy fails at fetch without leaving the machine
    doc = entry_doc(repo=str(tmp_path / "no-such-repo.git"))
    await api.call("PUT", "/api/v1/apps/web", json=doc)
    sha = "ab" * 20
    results = await asyncio.gather(
        *(
            api.call("POST", "/api/v1/apps/web/deploy", role="deployer", json={"sha": sha})
            for _ in range(10)
        )
    )
    ids = {r[1]["deploy_id"] for r in results}
    assert len(ids) == 1, results
    assert sorted(r[0] for r in results) == [200] * 9 + [202]


async def test_422_lists_every_problem_inside_env_volumes_and_build_args(api):
    # msgspec stops at a container's first bad item: each item is a problem of its own
    doc = entry_doc(
        container={
            "env": {"OK": "1", "DB": {"secret": ""}, "API": {"secret": "x", "extra": 1}},
            "volumes": ["/a:/a", 1, 2],
        },
        build_args={"A": 1, "B": "2", "C": None},
    )
    _status, body, resp = await api.call("PUT", "/api/v1/apps/web", json=doc)
    assert is_problem(resp, body, 422)
    assert [e["path"] for e in body["errors"]] == [
        "$.build_args.A",
        "$.build_args.C",
        "$.container.env.API",  # "Object contains unknown field `extra`"
        "$.container.env.DB.secret",
        "$.container.volumes[1]",
        "$.container.volumes[2]",
    ], body["errors"]
    assert await api.head_seq() == 0


async def test_ports_are_checked_at_registration(api):
    # else the deploy fails only at recreate, after the running container was stopped
    bad = ["abc", "80:99999", "0", "8080:80/xyz", "1.2.3.4::80", "", "8O"]
    doc = entry_doc(container={"ports": ["80", "127.0.0.1:8080:80", "53:53/udp", *bad]})
    _status, body, resp = await api.call("PUT", "/api/v1/apps/web", json=doc)
    assert is_problem(resp, body, 422)
    assert [e["path"] for e in body["errors"]] == [
        f"$.container.ports[{i}]" for i in range(3, 3 + len(bad))
    ], body["errors"]
    good = entry_doc(container={"ports": ["80", "127.0.0.1:8080:80", "53:53/udp", "[::1]:81:81"]})
    status, body, _ = await api.call("PUT", "/api/v1/apps/web", json=good)
    assert status == 201, body
