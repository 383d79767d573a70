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


async def deployed(api, app, **body) -> dict:
    view = await wait_status(api, await deploy(api, app.name, **body))
    assert view["status"] == "succeeded", view
    return view


async def test_broken_dockerfile_fails_at_build_and_leaves_the_old_container(
    api, sample_app, docker_a
):
    await register(api, sample_app)
    good = await deployed(api, sample_app)
    sample_app.broken_dockerfile()
    view = await wait_status(api, await deploy(api, sample_app.name))
    assert view["status"] == "failed" and "build" in view["reason"]
    assert step_names(view)[-1] == ("build", "failed")
    build = view["steps"][-1]
    assert any("no-such-file" in line for line in build["detail"]["tail"])
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == good["sha"]
    assert health_body(sample_app).strip() == f"sha={good['sha']}"


@pytest.mark.parametrize(
    ("variant", "why"),
    [
        ("exits_after", "restart"),
        ("health_status", "answered 500"),
        ("reports_sha", "without"),
    ],
)
async def test_a_release_that_fails_verify_is_rolled_back(api, sample_app, docker_a, variant, why):
    await register(api, sample_app)
    good = await deployed(api, sample_app)
    getattr(sample_app, variant)()
    view = await wait_status(api, await deploy(api, sample_app.name))
    assert view["status"] == "rolled_back", view
    assert view["rolled_back_to"] == good["sha"]
    verify = next(s for s in view["steps"] if s["name"] == "verify")
    assert verify["status"] == "failed" and why in verify["detail"]["error"], verify
    assert step_names(view)[-1] == ("rollback", "succeeded")
    labels = container_labels(docker_a, sample_app.name)
    assert labels["kua.sha"] == good["sha"]
    assert health_body(sample_app).strip() == f"sha={good['sha']}"
    _, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["release"]["sha"] == good["sha"] and rt["drift"] is False
    assert rt["container"]["image_id"] == good["image_id"]


async def test_first_release_failing_verify_leaves_the_app_stopped_and_says_so(
    api, sample_app, docker_a
):
    await register(api, sample_app)
    sample_app.health_status(500)
    view = await wait_status(api, await deploy(api, sample_app.name))
    assert view["status"] == "rolled_back" and view["rolled_back_to"] is None
    assert "left stopped" in view["reason"]
    _, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["release"] is None and rt["container"] is None


async def test_migration_gate_holds_until_approved(api, sample_app, docker_a):
    await register(api, sample_app)
    good = await deployed(api, sample_app)
    sample_app.add_migration(exit_code=0)
    deploy_id = await deploy(api, sample_app.name)
    view = await wait_status(api, deploy_id, {"awaiting_approval"})
    assert view["gate"]["paths"] == ["migrations/0001.sql"]
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == good["sha"]
    status, _, _ = await api.call("POST", f"/api/v1/deploys/{deploy_id}/approve", role="deployer")
    assert status == 403
    status, _, _ = await api.call("POST", f"/api/v1/deploys/{deploy_id}/approve")
    assert status == 200
    view = await wait_status(api, deploy_id)
    assert view["status"] == "succeeded", view
    assert view["gate"]["approved_by"] == "admin"
    migrate = next(s for s in view["steps"] if s["name"] == "migrate")
    assert migrate["status"] == "succeeded" and "0001.sql" in " ".join(migrate["detail"]["tail"])
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == sample_app.head


async def test_migration_gate_cancelled_changes_nothing(api, sample_app, docker_a):
    await register(api, sample_app)
    good = await deployed(api, sample_app)
    sample_app.add_migration(exit_code=0)
    deploy_id = await deploy(api, sample_app.name)
    await wait_status(api, deploy_id, {"awaiting_approval"})
    status, view, _ = await api.call("POST", f"/api/v1/deploys/{deploy_id}/cancel", role="deployer")
    assert status == 200 and view["status"] == "cancelled"
    assert "build" not in [s["name"] for s in view["steps"]]
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == good["sha"]
    status, _body, _ = await api.call("POST", f"/api/v1/deploys/{deploy_id}/approve")
    assert status == 409


async def test_failing_migration_leaves_the_old_container(api, sample_app, docker_a):
    await register(
        api,
        sample_app,
        migrations={"paths": ["migrations/**"], "command": ["./migrate"], "approval": "auto"},
    )
    good = await deployed(api, sample_app)
    sample_app.add_migration(exit_code=4)
    view = await wait_status(api, await deploy(api, sample_app.name))
    assert view["status"] == "failed" and step_names(view)[-1] == ("migrate", "failed")
    assert "exited with 4" in view["reason"]
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == good["sha"]
    assert health_body(sample_app).strip() == f"sha={good['sha']}"


async def test_gate_expires_and_cancels(tmp_path, docker_a, sample_app):
    from kuadeploy.config import DeployConfig

    config = DeployConfig(health_poll_s=0.1, gate_expiry_s=1)
    async with deploy_service(tmp_path / "d", docker_a, deploy=config) as api:
        await register(api, sample_app)
        sample_app.add_migration()
        view = await wait_status(api, await deploy(api, sample_app.name))
        assert view["status"] == "cancelled" and "expired" in view["reason"]
