"""An engine that accepts and never answers: every deploy still ends, in a step's
timeout or in a bounded housekeeping wait, never 'running' for good."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kuadeploy import events as ev
from kuadeploy.config import DeployConfig, ServerConfig
from kuadeploy.ledger import NewEvent
from tests.api_support import entry_doc, make_config, running
from tests.deploy_support import deploy, wait_status
from tests.test_adapters_git import Upstream


@pytest.fixture
async def silent_engine(tmp_path) -> AsyncIterator[str]:
    """unix://… of a "Docker engine" that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass

    path = tmp_path / "engine.sock"
    server = await asyncio.start_unix_server(hold, str(path))
    yield f"unix://{path}"
    server.close()
    for writer in held:
        writer.close()


async def test_a_self_deploy_on_a_silent_engine_ends(tmp_path: Path, silent_engine: str):
    # A self-deploy prunes old images before its fetch; that call had no bound, so the
    # deploy stayed 'running', at no step, for as long as the engine kept silent.
    upstream = Upstream(tmp_path / "upstream")
    upstream.commit({"Dockerfile": "FROM scratch\n"})
    timeouts = DeployConfig(recreate_timeout_s=0.5, build_timeout_s=0.5, fetch_timeout_s=10)
    config = make_config(
        tmp_path / "data", servers={"local": ServerConfig(docker=silent_engine)}, deploy=timeouts
    )
    async with running(config) as api:
        doc = entry_doc(repo=upstream.url, mode="self", container={"name": "kua"})
        assert (await api.call("PUT", "/api/v1/apps/kua", json=doc))[0] == 201
        earlier = [  # an earlier verified release: there is something to prune
            NewEvent("deploy/d-0", ev.DeployRequested(app="kua", trigger="api"), 0),
            NewEvent("deploy/d-0", ev.DeploySucceeded("kua", "a" * 40, "sha256:" + "0" * 64)),
        ]
        await api.service.ledger.append(earlier, actor="test")
        view = await wait_status(api, await deploy(api, "kua"), timeout=20)
        assert view["status"] == "failed", view
        assert [(s["name"], s["status"]) for s in view["steps"]][:2] == [
            ("fetch", "succeeded"),
            ("build", "failed"),
        ], view
