"""Deploy pipeline edge cases found in an audit, on a real engine and real git."""

from __future__ import annotations

import asyncio

import pytest

from kuadeploy import events as ev
from tests.deploy_support import (
    container_labels,
    deploy,
    deploy_service,
    register,
    step_names,
    wait_status,
)

pytestmark = pytest.mark.docker


@pytest.fixture
async def api(tmp_path, docker_a, docker_b):
    async with deploy_service(tmp_path / "data", docker_a, docker_b) as client:
        yield client


async def deployed(api, app, **body) -> dict:
    view = await wait_status(api, await deploy(api, app.name, **body))
    assert view["status"] == "succeeded", view
    return view


async def test_a_cancel_after_success_neither_rolls_back_nor_rewrites_the_outcome(
    api, sample_app, docker_a
):
    """A cancel that lands once DeploySucceeded is recorded (the run is still pruning
    images) must be refused: the deploy ended. It used to roll the verified release
    back and append RollbackStarted/RolledBack after DeploySucceeded."""
    await register(api, sample_app)
    await deployed(api, sample_app)
    sample_app.healthy(note="second")
    deploy_id = await deploy(api, sample_app.name)
    answers: list[asyncio.Task] = []

    def on_commit(batch) -> None:
        for stored in batch:
            if stored.event.stream == f"deploy/{deploy_id}" and isinstance(
                stored.event.data, ev.DeploySucceeded
            ):
                call = api.call("POST", f"/api/v1/deploys/{deploy_id}/cancel", role="deployer")
                answers.append(asyncio.ensure_future(call))

    unsubscribe = api.service.ledger.subscribe(on_commit)
    try:
        view = await wait_status(api, deploy_id)
        assert answers, view
        status, answer, _ = await answers[0]
    finally:
        unsubscribe()
    await asyncio.sleep(3)  # a wrong rollback would run now
    view = await wait_status(api, deploy_id)
    assert status == 409, answer
    assert view["status"] == "succeeded", view
    assert ("rollback", "running") not in step_names(view)
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == sample_app.head
    _, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["release"]["sha"] == sample_app.head and rt["drift"] is False


async def test_a_stop_after_success_does_not_turn_it_into_an_interruption(api, sample_app):
    """Stopping kuadeploy while a succeeded deploy prunes must not append
    DeployInterrupted after its DeploySucceeded (the deploy would read "interrupted")."""
    await register(api, sample_app)
    deploy_id = await deploy(api, sample_app.name)
    closing: list[asyncio.Task] = []

    def on_commit(batch) -> None:
        for stored in batch:
            if stored.event.stream == f"deploy/{deploy_id}" and isinstance(
                stored.event.data, ev.DeploySucceeded
            ):
                closing.append(asyncio.ensure_future(api.service.runner.close()))

    unsubscribe = api.service.ledger.subscribe(on_commit)
    try:
        await wait_status(api, deploy_id)
        assert closing
        await closing[0]
    finally:
        unsubscribe()
    view = await wait_status(api, deploy_id)
    assert view["status"] == "succeeded", view
    _, page, _ = await api.call("GET", "/api/v1/events?limit=1000", role="reader")
    types = [e["type"] for e in page["events"] if e["stream"] == f"deploy/{deploy_id}"]
    assert types[-1] == "DeploySucceeded", types
