"""The deploy pipeline on a real Docker engine with real git repositories."""

from __future__ import annotations

import pytest

from tests.deploy_support import (
    container_labels,
    deploy,
    deploy_service,
    health_body,
    register,
    step_names,
    wait_status,
)

pytestmark = pytest.mark.docker


@pytest.fixture
async def api(tmp_path, docker_a, docker_b):
    async with deploy_service(tmp_path / "data", docker_a, docker_b) as client:
        yield client


async def test_pushed_commit_is_deployed_and_verified(api, sample_app, docker_a):
    await register(api, sample_app)
    view = await wait_status(api, await deploy(api, sample_app.name))
    assert view["status"] == "succeeded", view
    sha = sample_app.head
    assert view["sha"] == sha and view["image_id"].startswith("sha256:")
    assert step_names(view) == [
        ("fetch", "succeeded"),
        ("migration_gate", "succeeded"),
        ("build", "succeeded"),
        ("recreate", "succeeded"),
        ("verify", "succeeded"),
    ]
    labels = container_labels(docker_a, sample_app.name)
    assert labels["kua.sha"] == sha and labels["org.opencontainers.image.revision"] == sha
    assert labels["kua.app"] == sample_app.name and labels["kua.deploy"] == view["id"]
    assert health_body(sample_app).strip() == f"sha={sha}"
    status, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert status == 200 and rt["release"]["sha"] == sha and rt["drift"] is False
    assert rt["container"]["sha"] == sha and rt["container"]["running"] is True
    build = next(s for s in view["steps"] if s["name"] == "build")
    assert len(build["detail"]["log_sha256"]) == 64 and build["detail"]["tail"]
