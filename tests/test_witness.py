"""`kuadeploy audit witness` against a real HTTP server serving the audit routes' bodies
(kuadeploy/audit/checkpoints.py) from a real ledger: growth is accepted, a rewritten
or truncated log is caught even when it is signed with the right key."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from aiohttp import web

from kuadeploy.audit import checkpoints
from kuadeploy.audit.keys import load_signer
from kuadeploy.audit.startup import AuditedLedger, open_checked
from kuadeploy.audit.witness import FetchError, http_fetch
from kuadeploy.config import Config
from tests.support import redirecting_server, register, run_cli

TOKEN = "reader-token"


class Server:
    """The three audit routes, over whichever ledger `serving` is."""

    def __init__(self) -> None:
        self.serving: AuditedLedger | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/audit/checkpoint", self.checkpoint)
        app.router.add_get("/api/v1/audit/proof/consistency", self.consistency)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise web.HTTPUnauthorized()

    async def checkpoint(self, request: web.Request) -> web.Response:
        self._authorized(request)
        assert self.serving is not None
        return web.Response(text=checkpoints.checkpoint_text(self.serving.checkpointer))

    async def consistency(self, request: web.Request) -> web.Response:
        self._authorized(request)
        assert self.serving is not None
        ledger, checkpointer = self.serving.ledger, self.serving.checkpointer
        try:
            body = await checkpoints.consistency_from_query(ledger, checkpointer, request.query)
        except checkpoints.ProofRequestError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response(body)


@pytest.fixture
async def server():
    srv = Server()
    await srv.start()
    yield srv
    await srv.stop()
    if srv.serving is not None:
        await srv.serving.ledger.close()


async def open_log(data_dir: Path, events: int, branch: str = "b") -> AuditedLedger:
    opened = await open_checked(Config(data_dir=str(data_dir), checkpoint_interval_s=3600))
    for i in range(events):
        await opened.ledger.append([register(f"a{i % 3}", f"{branch}{i}")], actor="t")
    await opened.checkpointer.sign_head()
    return opened


async def witness(server: Server, state: Path, *args: str):
    return await asyncio.to_thread(
        run_cli, "audit", "witness", "--url", server.url, "--state", str(state), *args,
        env={"KUA_TOKEN": TOKEN},
    )  # fmt: skip


async def test_first_run_records_then_growth_is_accepted(server, tmp_path):
    server.serving = await open_log(tmp_path / "log", 5)
    vkey = load_signer(Config(data_dir=str(tmp_path / "log"))).vkey
    state = tmp_path / "witness.json"

    proc = await witness(server, state, "--pubkey", vkey)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "first run: recorded" in proc.stdout and "at size 5" in proc.stdout
    assert "trust on first use" in proc.stdout and "signature verified" in proc.stdout
    recorded = json.loads(state.read_text())
    assert recorded["size"] == 5 and recorded["vkey"] == vkey

    for i in range(30):
        await server.serving.ledger.append([register("web", f"more{i}")], actor="t")
    await server.serving.checkpointer.sign_head()
    proc = await witness(server, state)  # the key recorded on the first run is used
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "size 35 extends size 5 (signature verified)" in proc.stdout
    assert json.loads(state.read_text())["size"] == 35

    proc = await witness(server, state)  # nothing new: same size, same root
    assert proc.returncode == 0 and "size 35 extends size 35" in proc.stdout


async def test_a_rewritten_log_signed_with_the_right_key_is_caught(server, tmp_path):
    server.serving = await open_log(tmp_path / "log", 12)
    state = tmp_path / "witness.json"
    vkey = load_signer(Config(data_dir=str(tmp_path / "log"))).vkey
    assert (await witness(server, state, "--pubkey", vkey)).returncode == 0
    before = state.read_text()

    # The operator (or whoever has the key) rebuilds history and re-signs it.
    forged_dir = tmp_path / "forged"
    shutil.copytree(tmp_path / "log" / "keys", forged_dir / "keys")
    await server.serving.ledger.close()
    server.serving = await open_log(forged_dir, 20, branch="evil")
    proc = await witness(server, state)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED: checkpoint of size 20 is not consistent with the size 12" in proc.stdout
    assert "(rewritten)" in proc.stdout
    assert state.read_text() == before, "the state keeps what was seen before"


async def test_a_truncated_log_is_caught(server, tmp_path):
    server.serving = await open_log(tmp_path / "log", 12)
    state = tmp_path / "witness.json"
    assert (await witness(server, state)).returncode == 0
    forged_dir = tmp_path / "forged"
    shutil.copytree(tmp_path / "log" / "keys", forged_dir / "keys")
    await server.serving.ledger.close()
    server.serving = await open_log(forged_dir, 4)
    proc = await witness(server, state)
    assert proc.returncode == 1
    assert "FAILED: the log shrank: it served size 12 before, now 4 (truncated)" in proc.stdout


async def test_signatures(server, tmp_path):
    server.serving = await open_log(tmp_path / "log", 3)
    state = tmp_path / "witness.json"
    proc = await witness(server, state)
    assert proc.returncode == 0 and "signature NOT checked (no --pubkey)" in proc.stdout
    other = await open_log(tmp_path / "other", 0)
    other_vkey = load_signer(Config(data_dir=str(tmp_path / "other"))).vkey
    await other.ledger.close()
    proc = await witness(server, tmp_path / "fresh.json", "--pubkey", other_vkey)
    assert proc.returncode == 1 and "FAILED: checkpoint rejected" in proc.stdout
    assert not (tmp_path / "fresh.json").exists()
    vkey = load_signer(Config(data_dir=str(tmp_path / "log"))).vkey
    assert (await witness(server, tmp_path / "pinned.json", "--pubkey", vkey)).returncode == 0
    proc = await witness(server, tmp_path / "pinned.json", "--pubkey", other_vkey)
    assert proc.returncode == 1 and "differs from the key recorded" in proc.stdout


async def test_no_server_or_no_token_is_not_a_verdict(server, tmp_path):
    server.serving = await open_log(tmp_path / "log", 1)
    proc = await asyncio.to_thread(
        run_cli, "audit", "witness", "--url", server.url, "--state", str(tmp_path / "s.json")
    )
    assert proc.returncode == 2 and "HTTP 401" in proc.stderr
    proc = await asyncio.to_thread(
        run_cli, "audit", "witness", "--url", "http://127.0.0.1:9", "--state", str(tmp_path / "s")
    )
    assert proc.returncode == 2 and "GET http://127.0.0.1:9/api/v1/audit/checkpoint" in proc.stderr


def test_the_witness_follows_no_redirect_with_its_token():
    """urllib.request.urlopen follows a 307 to any host with the Authorization header."""
    with redirecting_server() as (url, _moved, seen), pytest.raises(FetchError, match="307"):
        http_fetch("s3cret", timeout=5)(f"{url}/api/v1/audit/checkpoint")
    assert [b"s3cret" in request for request in seen] == [True]
