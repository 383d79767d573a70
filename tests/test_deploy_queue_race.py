"""Races between the queue's worker and requests that end a queued deploy."""

from __future__ import annotations

import pytest

from kuadeploy.pipeline import run as pipeline_run
from tests.deploy_support import deploy, deploy_service, register, wait_status

pytestmark = pytest.mark.docker


async def test_a_deploy_superseded_as_the_worker_picks_it_up_never_runs(
    tmp_path, docker_a, sample_app, monkeypatch
):
    """A request landing after the worker chose the oldest queued deploy but before
    that deploy recorded DeployStarted supersedes it (it is still queued in the
    ledger). The worker used to start it anyway: DeployStarted, a build and a
    second terminal event after DeploySuperseded — a superseded deploy that ran."""
    original = pipeline_run.DeployRun.run
    later: list[str] = []

    async def run_after_a_request(self):
        if not later:  # the first run only: a newer request lands in the window
            newer = await api.service.request_deploy(self.app, "admin", force=True)
            later.append(newer.deploy_id)
        await original(self)

    monkeypatch.setattr(pipeline_run.DeployRun, "run", run_after_a_request)
    async with deploy_service(tmp_path / "data", docker_a) as api:
        await register(api, sample_app)
        first = await deploy(api, sample_app.name)
        view = await wait_status(api, first)
        newer = await wait_status(api, later[0])
        assert view["status"] == "superseded", view
        assert view["steps"] == [], view
        types = [e.event.type for e in await api.service.ledger.read_stream(f"deploy/{first}")]
        assert types == ["DeployRequested", "DeploySuperseded"], types
        assert newer["status"] == "succeeded", newer
