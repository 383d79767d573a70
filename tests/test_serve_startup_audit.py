"""`kuadeploy serve` start-up: problems a user can make are one line and exit 2, and
what cannot stop start-up (an engine that is unusable) does not."""

from __future__ import annotations

import msgspec
import pytest

from kuadeploy import events as ev
from kuadeploy.config import ServerConfig
from kuadeploy.ledger import NewEvent
from kuadeploy.service import Service, StartupError
from tests.api_support import entry_doc, make_config, running


async def test_an_unreadable_checkpoint_key_is_a_startup_error(tmp_path):
    key = tmp_path / "checkpoint.key"
    key.write_text("not a signer key\n")
    with pytest.raises(StartupError, match="checkpoint key"):
        await Service.open(make_config(tmp_path / "d", checkpoint_key=str(key)))


async def test_a_missing_checkpoint_key_is_a_startup_error(tmp_path):
    missing = str(tmp_path / "nowhere" / "checkpoint.key")
    with pytest.raises(StartupError, match="no such file"):
        await Service.open(make_config(tmp_path / "d", checkpoint_key=missing))


async def test_an_invalid_checkpoint_origin_is_a_startup_error(tmp_path):
    with pytest.raises(StartupError, match="checkpoint_origin"):
        await Service.open(make_config(tmp_path / "d", checkpoint_origin="has space"))


async def test_an_engine_whose_tls_files_are_gone_never_stops_startup(tmp_path):
    """A deploy was in flight when kuadeploy stopped; meanwhile the server's TLS files
    moved. The next start records the interruption and serves; runtime-status says
    the engine cannot be used."""
    data = tmp_path / "d"
    async with running(make_config(data)) as api:
        status, _, _ = await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        assert status == 201
        started = [
            NewEvent("deploy/d1", ev.DeployRequested("web", "api"), 0),
            NewEvent("deploy/d1", ev.DeployStarted("web")),
        ]
        await api.service.ledger.append(started, actor="t")
    gone = ServerConfig(docker="tcp://127.0.0.1:9", tls_ca=str(tmp_path / "gone-ca.pem"))
    async with running(make_config(data, servers={"local": gone})) as api:
        status, view, _ = await api.call("GET", "/api/v1/deploys/d1")
        assert status == 200 and view["status"] == "interrupted", view
        status, body, _ = await api.call("GET", "/api/v1/apps/web/runtime-status")
        assert status == 200, body
        assert "gone-ca.pem" in msgspec.json.encode(body).decode()
