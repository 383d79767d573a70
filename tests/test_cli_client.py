"""`kuadeploy history` and `kuadeploy export` as clients of a real server on 127.0.0.1
(the CLI in a subprocess), and their offline twins on the same data dir."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.api_support import TOKENS, entry_doc, make_config, running
from tests.support import redirecting_server, run_cli


@pytest.fixture
async def api(tmp_path):
    async with running(make_config(tmp_path)) as client:
        yield client


async def cli(*args: str, env: dict | None = None):
    # In a thread: the server answering it runs on this test's event loop.
    return await asyncio.to_thread(run_cli, *args, env=env)


async def remote(api, *args: str, role: str = "reader"):
    return await cli(*args, "--url", api.base, "--token", TOKENS[role])


async def script(api) -> None:
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
    await api.call(
        "PATCH", "/api/v1/apps/web", json={"branch": "dev", "container": {"env": {"A": "1"}}}
    )
    await api.call("DELETE", "/api/v1/apps/web")
    await api.call("PUT", "/api/v1/apps/web", json=entry_doc("main", dockerfile="ops/Dockerfile"))
    await api.call("PUT", "/api/v1/apps/api", json=entry_doc())


async def test_history_table(api):
    await script(api)
    proc = await remote(api, "history", "web")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["SEQ", "TIME", "ACTOR", "TYPE", "CHANGE"]
    assert len(rows) == 4
    cells = [row.split(None, 5) for row in rows]
    assert [c[0] for c in cells] == ["1", "2", "3", "4"]
    assert {c[3] for c in cells} == {"admin"}
    assert [c[4] for c in cells] == ["AppRegistered", "AppPatched", "AppRemoved", "AppRegistered"]
    assert cells[0][5] == "created (server local, branch main)"
    assert cells[1][5] == "/branch: main → dev, +/container/env/A"
    assert cells[2][5] == "removed"
    assert cells[3][5] == "created (server local, branch main)"
    assert cells[0][1].count("-") == 2 and cells[0][2].endswith("Z")  # date, time


async def test_history_json_is_the_api_document(api):
    await script(api)
    proc = await remote(api, "history", "web", "--json")
    assert proc.returncode == 0, proc.stderr
    _, body, _ = await api.call("GET", "/api/v1/apps/web/history", role="reader")
    assert json.loads(proc.stdout) == body


async def test_offline_history_prints_the_same(api, tmp_path):
    await script(api)
    online = await remote(api, "history", "web")
    offline = await cli("history", "web", "--data-dir", str(tmp_path))
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == online.stdout


async def test_export_at_head_seq_and_time(api):
    await script(api)
    proc = await remote(api, "export")
    assert proc.returncode == 0, proc.stderr
    _, head, _ = await api.call("GET", "/api/v1/registry/export", role="reader")
    assert json.loads(proc.stdout) == head
    assert sorted(head["apps"]) == ["api", "web"]
    proc = await remote(api, "export", "--at", "2")
    _, at2, _ = await api.call("GET", "/api/v1/registry/export?at=2", role="reader")
    assert json.loads(proc.stdout) == at2 and at2["apps"]["web"]["branch"] == "dev"
    when = at2["as_of"]["ts"]
    proc = await remote(api, "export", "--at", when)
    assert json.loads(proc.stdout)["as_of"]["seq"] == 2


async def test_url_and_token_from_the_environment(api):
    await script(api)
    env = {"KUA_URL": api.base, "KUA_TOKEN": TOKENS["reader"]}
    proc = await cli("export", "--at", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads(proc.stdout)["apps"]) == ["web"]
    proc = await cli("history", "api", env=env)
    assert proc.returncode == 0 and "AppRegistered" in proc.stdout


async def test_data_dir_keeps_export_offline_even_with_kua_url(api, tmp_path):
    await script(api)
    env = {"KUA_URL": "http://127.0.0.1:1", "KUA_TOKEN": "unused"}
    proc = await cli("export", "--data-dir", str(tmp_path), "--at", "3", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["apps"] == {}


async def test_errors_are_one_line_and_fail(api):
    await script(api)
    cases = [
        (["history", "web", "--url", api.base, "--token", "wrong"], "unauthorized (check --token)"),
        (["history", "web", "--url", api.base], "no token: pass --token or set KUA_TOKEN"),
        (
            ["history", "nope", "--url", api.base, "--token", TOKENS["reader"]],
            "not found: app 'nope' has no history (HTTP 404)",
        ),
        (
            ["export", "--at", "99", "--url", api.base, "--token", TOKENS["reader"]],
            "invalid point in time: seq 99 is beyond the head of the ledger (5) (HTTP 422)",
        ),
        (["export", "--url", "127.0.0.1:8080", "--token", "t"], "must start with http://"),
        (
            ["deploy", "web", "--sha", "xyz", "--url", api.base, "--token", TOKENS["deployer"]],
            "kuadeploy: invalid request: sha must be 4 to 64 hex digits ($.sha) (HTTP 422)\n",
        ),
    ]
    for args, message in cases:
        proc = await cli(*args)
        assert proc.returncode != 0, args
        assert proc.stdout == ""
        assert proc.stderr.startswith("kuadeploy: ") and message in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr


async def test_connection_refused_says_so():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        proc = await cli("export", "--url", f"http://127.0.0.1:{port}", "--token", "t")
    assert proc.returncode != 0
    assert proc.stderr == (
        f"kuadeploy: cannot reach http://127.0.0.1:{port}: "
        "connection refused (is the server running? check --url)\n"
    )


@contextlib.contextmanager
def answering_once(answer: bytes) -> Iterator[str]:
    """http://127.0.0.1:PORT of a server that reads one request and sends `answer`."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(10)

        def serve_once() -> None:
            try:
                conn, _ = server.accept()
            except TimeoutError:  # nobody came
                return
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

        serving = threading.Thread(target=serve_once)
        serving.start()
        try:
            yield f"http://127.0.0.1:{server.getsockname()[1]}"
        finally:
            serving.join()


@pytest.mark.parametrize(
    "answer",
    [
        b"",  # closed without a word (a server killed mid-request)
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{",  # cut off mid-body
        b"garbage\r\n\r\n",  # not HTTP
    ],
)
async def test_a_dropped_or_garbled_answer_is_a_one_line_error(answer):
    """urllib wraps only errors before the answer; the rest must not be a traceback
    (`deploy` and `--follow` retry on a client error, never on a crash)."""
    with answering_once(answer) as url:
        proc = await cli("export", "--url", url, "--token", "t")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"kuadeploy: {url} ")
    assert proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:99999", "http://"])
async def test_a_malformed_url_is_a_one_line_error(url):
    proc = await cli("export", "--url", url, "--token", "t")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"kuadeploy: --url {url!r}") and proc.stderr.count("\n") == 1


async def test_a_redirect_is_not_followed_with_the_token():
    """urllib follows a redirect to any host with the same Authorization header: a proxy
    or a wrong --url answering 307 to another host would receive the token."""
    with redirecting_server() as (url, moved, seen):
        proc = await cli("export", "--url", url, "--token", "s3cret")
    assert [b"s3cret" in request for request in seen] == [True]
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"kuadeploy: redirected to {moved}: not followed (check --url) (HTTP 307)\n"
    )


@pytest.mark.parametrize(
    ("command", "body"),
    [(("deploy", "web"), b'{"ok": true}'), (("deploy", "web"), b"[]"), (("history", "web"), b"{}")],
    ids=["deploy-other-json", "deploy-list", "history-other-json"],
)
async def test_json_that_is_not_the_apis_answer_is_a_one_line_error(command, body):
    """Another service on --url (or a proxy) answering JSON of its own: no traceback."""
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
    with answering_once(head.encode() + body) as url:
        proc = await cli(*command, "--url", url, "--token", "t")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"kuadeploy: {url} answered JSON that is not kuadeploy's (check --url)\n"
