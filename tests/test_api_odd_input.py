"""Odd input found by probing the fuzzed surface: a clean 4xx problem, never a 500."""

from __future__ import annotations

import pytest

from kuadeploy import events as ev
from kuadeploy.ledger import NewEvent
from tests.api_support import entry_doc, make_config, running


@pytest.mark.parametrize("at", ["²", "1²", "9" * 5000, "99999999999999999999"])
async def test_export_at_odd_numbers_is_422(tmp_path, at: str) -> None:
    async with running(make_config(tmp_path)) as api:
        await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        status, body, resp = await api.call("GET", f"/api/v1/registry/export?at={at}")
        assert status == 422, body
        assert resp.content_type == "application/problem+json"
        assert len(body["detail"]) < 200


@pytest.mark.parametrize("after", ["٣", "1_0", " 3", "²", "9" * 30])
async def test_events_after_takes_only_ascii_integers(tmp_path, after: str) -> None:
    async with running(make_config(tmp_path)) as api:
        status, body, _ = await api.call("GET", f"/api/v1/events?after={after}", role="reader")
        assert status == 400, body
        assert "after" in body["detail"]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_body_that_is_not_utf8_is_400(tmp_path, method: str) -> None:
    async with running(make_config(tmp_path)) as api:
        await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        head = await api.head_seq()
        raw = b'{"server":"local","repo":"x\xed\xa0\x80","branch":"main"}'
        status, body, resp = await api.call(
            method, "/api/v1/apps/web", data=raw, headers={"Content-Type": "application/json"}
        )
        assert status == 400, body
        assert resp.content_type == "application/problem+json"
        assert await api.head_seq() == head


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize("depth", [5000, 980])  # past the decoder's limit, or just within
async def test_body_nested_too_deeply_is_400(tmp_path, method: str, depth: int) -> None:
    async with running(make_config(tmp_path)) as api:
        await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        head = await api.head_seq()
        raw = b'{"container":{"env":' + b'{"a":' * depth + b"1" + b"}" * (depth + 2)
        status, body, resp = await api.call(
            method, "/api/v1/apps/web", data=raw, headers={"Content-Type": "application/json"}
        )
        assert status == 400, body
        assert resp.content_type == "application/problem+json"
        assert await api.head_seq() == head


@pytest.mark.parametrize(
    ("path", "field"), [("/api/v1/apps/web/deploy", "sha"), ("/api/v1/apps/web/rollback", "to")]
)
async def test_deploy_body_that_is_not_utf8_is_400(tmp_path, path: str, field: str) -> None:
    async with running(make_config(tmp_path)) as api:
        await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        head = await api.head_seq()
        raw = b'{"' + field.encode() + b'":"\xed\xa0\x80"}'
        status, body, resp = await api.call(
            "POST", path, data=raw, headers={"Content-Type": "application/json"}
        )
        assert status == 400, body
        assert resp.content_type == "application/problem+json"
        assert await api.head_seq() == head


@pytest.mark.parametrize("to", ["", "b", "bbb", "zzzz"])
async def test_rollback_to_that_is_not_a_sha_prefix_is_422(tmp_path, to: str) -> None:
    # "" (an empty --to "$SHA") is a prefix of every SHA: it "rolled back" to the
    # newest release — the one running — and answered 202.
    async with running(make_config(tmp_path)) as api:
        await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        for n, sha in enumerate(("a" * 40, "b" * 40)):
            image = f"sha256:{n}" + "0" * 63
            await api.service.ledger.append(
                [
                    NewEvent(f"deploy/d-{n}", ev.DeployRequested(app="web", trigger="api"), 0),
                    NewEvent(f"deploy/d-{n}", ev.DeployStarted(app="web", sha=sha)),
                    NewEvent(f"deploy/d-{n}", ev.DeploySucceeded("web", sha, image)),
                ],
                actor="test",
            )
        head = await api.head_seq()
        status, body, _ = await api.call("POST", "/api/v1/apps/web/rollback", json={"to": to})
        assert status == 422, body
        assert body["errors"][0]["path"] == "$.to"
        assert await api.head_seq() == head
        status, body, _ = await api.call("POST", "/api/v1/apps/web/rollback", json={"to": "aaaa"})
        assert status == 202, body


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
async def test_export_at_time_outside_the_calendar_in_utc_is_422(tmp_path, at: str) -> None:
    # valid RFC 3339, but its UTC instant falls outside year 1..9999
    async with running(make_config(tmp_path)) as api:
        await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        query = at.replace("+", "%2B")
        status, body, resp = await api.call("GET", f"/api/v1/registry/export?at={query}")
        assert status == 422, body
        assert resp.content_type == "application/problem+json"


@pytest.mark.parametrize("last_id", ["9" * 30, "²", "1_0", "٣"])
async def test_sse_last_event_id_takes_only_ascii_seqs(tmp_path, last_id: str) -> None:
    # a clean 400 before the stream starts, not a stream that dies on a traceback
    async with running(make_config(tmp_path)) as api:
        await api.call("PUT", "/api/v1/apps/web", json=entry_doc(repo=str(tmp_path / "no.git")))
        status, body, _ = await api.call("POST", "/api/v1/apps/web/deploy", json={})
        assert status == 202, body
        for path in ["/api/v1/events/stream", f"/api/v1/deploys/{body['deploy_id']}/stream"]:
            status, problem, resp = await api.call(
                "GET", path, role="reader", headers={"Last-Event-ID": last_id}
            )
            assert status == 400, (path, problem)
            assert resp.content_type == "application/problem+json"
