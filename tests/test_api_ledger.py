"""Events feed, SSE, export at any point, audit, legacy import and restarts over the API."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from kuadeploy.service import StartupError
from tests.api_support import TOKENS, entry_doc, make_config, running
from tests.support import unprotect

SCRIPT = [
    ("PUT", "web", entry_doc()),
    ("PUT", "api", entry_doc("dev")),
    ("PATCH", "web", {"branch": "release", "container": {"env": {"A": "1"}}}),
    ("DELETE", "api", None),
    ("PUT", "db", entry_doc(keep_releases=3)),
    ("PUT", "api", entry_doc("back")),
    ("PUT", "api", entry_doc("again")),  # a replace
    ("PATCH", "db", {"container": {"env": {"A": None, "B": "2"}}}),
    ("DELETE", "web", None),
]


async def play_script(api) -> None:
    for method, app, doc in SCRIPT:
        status, body, _ = await api.call(method, f"/api/v1/apps/{app}", json=doc)
        assert status in (200, 201), body


async def all_events(api) -> list[dict]:
    events, after = [], 0
    while True:
        _, page, _ = await api.call("GET", f"/api/v1/events?after={after}&limit=3", role="reader")
        events += page["events"]
        if not page["events"]:
            return events
        after = page["next_after"]


@pytest.fixture
async def api(tmp_path):
    async with running(make_config(tmp_path)) as client:
        yield client


async def test_export_at_every_seq_equals_a_fold_of_the_events_feed(api):
    await play_script(api)
    events = await all_events(api)
    assert [e["seq"] for e in events] == list(range(1, len(SCRIPT) + 1))
    apps: dict = {}
    versions: dict = {}
    for e in events:  # the fold a third party writes from DESIGN §3 alone
        body = json.loads(e["body"])
        assert body["seq"] == e["seq"] and body["type"] == e["type"]
        if body["type"] in ("AppRegistered", "AppReplaced", "AppPatched"):
            apps[body["data"]["app"]] = body["data"]["entry"]
            versions[body["data"]["app"]] = body["version"]
        elif body["type"] == "AppRemoved":
            apps.pop(body["data"]["app"])
            versions.pop(body["data"]["app"])
        status, doc, _ = await api.call("GET", f"/api/v1/registry/export?at={e['seq']}")
        assert status == 200
        assert doc["apps"] == apps and doc["versions"] == versions
        assert doc["as_of"] == {"seq": e["seq"], "ts": e["ts"], "hash": e["hash"]}
    _, head, _ = await api.call("GET", "/api/v1/registry/export", role="reader")
    assert head["apps"] == apps and head["as_of"]["seq"] == len(SCRIPT)


async def test_events_feed_carries_the_exact_stored_body(api):
    await play_script(api)
    events = await all_events(api)
    import hashlib

    prev = bytes(32)
    for e in events:
        prev = hashlib.sha256(prev + e["body"].encode()).digest()
        assert prev.hex() == e["hash"]  # anyone can recheck the chain from the feed


async def test_export_at_time_and_bad_points(api):
    await play_script(api)
    events = await all_events(api)
    ts3 = events[2]["ts"]
    _, doc, _ = await api.call("GET", f"/api/v1/registry/export?at={ts3}")
    assert doc["as_of"]["seq"] >= 3 and doc["as_of"]["ts"] == ts3
    for at, word in [
        ("999", "beyond the head"),
        ("2001-01-01T00:00:00Z", "before the first event"),
        ("3000-01-01T00:00:00Z", "in the future"),
        ("soon", "not an RFC 3339 time"),
    ]:
        status, body, resp = await api.call("GET", f"/api/v1/registry/export?at={at}")
        assert status == 422 and resp.content_type == "application/problem+json"
        assert word in body["detail"]


async def test_export_snapshot_writes_a_file_atomically(api, tmp_path):
    await play_script(api)
    _status, doc, _ = await api.call("GET", "/api/v1/registry/export?at=5&snapshot=1")
    path = Path(doc["snapshot_path"])
    assert path.parent == tmp_path / "exports" and path.name.endswith("-seq5.json")
    saved = json.loads(path.read_text())
    assert saved["as_of"]["seq"] == 5 and saved["apps"] == doc["apps"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left


async def test_sse_stream_live_and_resumed(api):
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    headers = {"Authorization": f"Bearer {TOKENS['reader']}", "Last-Event-ID": "0"}
    got: list[tuple[str, dict]] = []

    async def listen():
        async with api.session.get(api.url("/api/v1/events/stream"), headers=headers) as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            ident = None
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    ident = line[4:]
                elif line.startswith("data: "):
                    got.append((ident, json.loads(line[6:])))
                    if len(got) == 3:
                        return

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.2)
    await api.call("PATCH", "/api/v1/apps/web", json={"branch": "a"})
    await api.call("PATCH", "/api/v1/apps/web", json={"branch": "b"})
    await asyncio.wait_for(task, 10)
    assert [i for i, _ in got] == ["1", "2", "3"]
    assert [d["type"] for _, d in got] == ["AppRegistered", "AppPatched", "AppPatched"]

    headers["Last-Event-ID"] = "2"
    async with api.session.get(api.url("/api/v1/events/stream"), headers=headers) as resp:
        first = b""
        while b"\n\n" not in first:
            first += await resp.content.readany()
    assert first.startswith(b"id: 3\nevent: AppPatched\ndata: ")


async def test_sse_stream_ends_once_its_token_is_revoked(api, tmp_path):
    """Auth is checked for each request, and a stream is one request that never ends:
    it must not keep feeding the ledger to a token that no longer exists."""
    from kuadeploy.tokens import add_token

    token = add_token(str(tmp_path), "watcher", "reader")
    headers = {"Authorization": f"Bearer {token}"}
    async with api.session.get(api.url("/api/v1/events/stream"), headers=headers) as resp:
        assert resp.status == 200
        (tmp_path / "tokens.json").write_text('{"tokens": []}')  # revoked
        await asyncio.sleep(1.5)  # the token file is looked at again within a second
        await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        rest = await asyncio.wait_for(resp.content.read(), 5)  # the stream ends
    assert b"AppRegistered" not in rest


async def test_sse_sends_heartbeats(api):
    headers = {"Authorization": f"Bearer {TOKENS['reader']}"}
    async with api.session.get(api.url("/api/v1/events/stream"), headers=headers) as resp:
        chunk = await asyncio.wait_for(resp.content.readany(), 5)
    assert chunk == b": heartbeat\n\n"


async def test_audit_verify_incremental_and_full(api):
    await play_script(api)
    status, body, _ = await api.call("GET", "/api/v1/audit/verify", role="reader")
    assert status == 200 and body["ok"] is True and body["events"] == len(SCRIPT)
    assert body["head"]["seq"] == len(SCRIPT) and len(body["head"]["hash"]) == 64
    await api.call("PUT", "/api/v1/apps/zz", json=entry_doc())
    _, body, _ = await api.call("GET", "/api/v1/audit/verify?full=1", role="reader")
    assert body["ok"] is True and body["head"]["seq"] == len(SCRIPT) + 1
    _, metrics, _ = await api.call("GET", "/metrics", role=None)
    assert b"kuadeploy_audit_last_verify_ok 1.0" in metrics


async def test_audit_verify_full_sees_a_changed_type_column(api):
    """The column registry_at selects by is unhashed: the verifier compares it."""
    await play_script(api)
    with closing(sqlite3.connect(api.service.config.ledger_path, isolation_level=None)) as conn:
        unprotect(conn)
        conn.execute("UPDATE events SET type = 'AppRemoved' WHERE seq = 1")
    status, body, _ = await api.call("GET", "/api/v1/audit/verify?full=1", role="reader")
    assert status == 200 and body["ok"] is False and body["first_bad_seq"] == 1
    assert body["reason"] == "type column 'AppRemoved' differs from the body's 'AppRegistered'"


async def test_healthz_and_metrics_need_no_token(api):
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    status, body, _ = await api.call("GET", "/healthz", role=None)
    assert status == 200 and body["status"] == "ok" and body["head_seq"] == 1
    assert set(body) >= {"status", "version", "git_sha", "head_seq"}
    status, text, resp = await api.call("GET", "/metrics", role=None)
    assert status == 200 and resp.content_type == "text/plain"
    assert b"kuadeploy_ledger_head_seq 1.0" in text
    assert (
        b'kuadeploy_http_requests_total{method="PUT",route="/api/v1/apps/{app}",status="201"}'
        in text
    )
    assert b"kuadeploy_ledger_append_batch_size_count" in text


async def test_restart_keeps_registry_versions_etags_and_history(tmp_path):
    config = make_config(tmp_path)
    async with running(config) as api:
        await play_script(api)
        _, before, _ = await api.call("GET", "/api/v1/registry/export")
        _, hist_before, _ = await api.call("GET", "/api/v1/apps/api/history")
        _, _, resp = await api.call("GET", "/api/v1/apps/db")
        etag_before = resp.headers["ETag"]
    async with running(config) as api:
        _, after, _ = await api.call("GET", "/api/v1/registry/export")
        _, hist_after, _ = await api.call("GET", "/api/v1/apps/api/history")
        _, _, resp = await api.call("GET", "/api/v1/apps/db")
        assert after == before and hist_after == hist_before
        assert resp.headers["ETag"] == etag_before
        status, _, _ = await api.call(
            "PATCH", "/api/v1/apps/db", json={"branch": "x"}, headers={"If-Match": etag_before}
        )
        assert status == 200


LEGACY = {
    "apps": {
        "web": entry_doc(),
        "api": entry_doc("dev", container={"name": "api", "env": {"X": "1"}}),
    }
}


async def test_legacy_import_once_atomically_and_never_again(tmp_path):
    legacy = tmp_path / "deploy-registry.json"
    legacy.write_text(json.dumps(LEGACY))
    config = make_config(tmp_path / "data", legacy_registry=str(legacy))
    async with running(config) as api:
        events = await all_events(api)
        assert [e["type"] for e in events] == [
            "LegacyRegistryImported",
            "AppRegistered",
            "AppRegistered",
        ]
        assert {e["actor"] for e in events} == {"system"}
        import hashlib

        marker = events[0]["data"]
        assert marker["sha256"] == hashlib.sha256(legacy.read_bytes()).hexdigest()
        assert marker["apps"] == ["api", "web"]
        _, doc, _ = await api.call("GET", "/api/v1/apps/api")
        assert doc["entry"]["container"]["env"] == {"X": "1"}
    legacy.write_text(json.dumps({"apps": {**LEGACY["apps"], "new": entry_doc()}}))
    async with running(config) as api:
        assert await api.head_seq() == 3
        status, _, _ = await api.call("GET", "/api/v1/apps/new")
        assert status == 404


async def test_legacy_import_of_a_plain_mapping(tmp_path):
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps(LEGACY["apps"]))
    async with running(make_config(tmp_path / "d", legacy_registry=str(legacy))) as api:
        _, doc, _ = await api.call("GET", "/api/v1/apps")
        assert [a["app"] for a in doc["apps"]] == ["api", "web"]


async def test_invalid_legacy_entries_abort_startup_listing_them(tmp_path):
    legacy = tmp_path / "legacy.json"
    bad = {
        "web": entry_doc(),
        "Bad_Name": entry_doc(),
        "api": entry_doc("a..b", bogus=1),
        "www": entry_doc(container={"name": "web"}),  # web's container
    }
    legacy.write_text(json.dumps(bad))
    config = make_config(tmp_path / "d", legacy_registry=str(legacy))
    with pytest.raises(StartupError) as info:
        async with running(config):
            pass
    message = str(info.value)
    assert "nothing imported" in message
    assert "Bad_Name: app" in message and "api: $.branch" in message and "api: $.bogus" in message
    assert "www: $.container.name container 'web' on server 'local' belongs to app 'web'" in message
    assert "web:" not in message
    from kuadeploy.ledger import reading

    conn = reading.open_readonly(config.ledger_path)
    assert reading.read_head(conn).seq == 0  # never a half-seeded registry
    conn.close()


async def test_second_server_on_the_same_data_dir_is_refused(tmp_path):
    config = make_config(tmp_path)
    async with running(config):
        with pytest.raises(StartupError, match="in use by another kuadeploy server"):
            async with running(config):
                pass


async def test_events_page_params_are_checked(api):
    status, body, _ = await api.call("GET", "/api/v1/events?limit=0", role="reader")
    assert status == 400 and "limit" in body["detail"]
    status, body, _ = await api.call("GET", "/api/v1/events?after=x", role="reader")
    assert status == 400


@pytest.mark.parametrize(
    ("raw", "why"),
    [(b'{"w\xff": {}}', "not valid JSON"), (b"[" * 100_000, "not valid JSON")],
    ids=["not-utf8", "too-deep"],
)
async def test_a_legacy_file_not_utf8_or_nested_too_deep_is_a_startup_error(tmp_path, raw, why):
    legacy = tmp_path / "legacy.json"
    legacy.write_bytes(raw)
    with pytest.raises(StartupError, match=why):
        async with running(make_config(tmp_path / "d", legacy_registry=str(legacy))):
            pass


@pytest.mark.parametrize(
    "raw",
    [b'{"apps": {"web": {}}, "apps": {"api": {}}}', b'{"web": {"server": "a"}, "web": {}}'],
    ids=["two-apps-objects", "one-app-twice"],
)
async def test_a_legacy_file_with_duplicate_keys_is_a_startup_error(tmp_path, raw):
    # a JSON decoder keeps the last of two equal keys: an app went missing, or the
    # wrong entry was imported, and the server started without a word
    legacy = tmp_path / "legacy.json"
    legacy.write_bytes(raw)
    with pytest.raises(StartupError, match="duplicate keys, nothing imported"):
        async with running(make_config(tmp_path / "d", legacy_registry=str(legacy))):
            pass
