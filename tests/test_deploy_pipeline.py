"""The deploy pipeline on a real Docker engine with real git repositories."""

from __future__ import annotations

import asyncio
import socket

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
    # nothing verified runs: not "rolled_back", which promises a verified release
    assert view["status"] == "failed" and view["rolled_back_to"] is None
    assert "left stopped" in view["reason"]
    _, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["release"] is None and rt["container"] is None


async def test_a_rollback_that_does_not_verify_fails_and_the_next_one_restores(
    api, sample_app, docker_a
):
    """The restored release cannot bind its port (held here), so the rollback fails:
    the deploy is failed, not rolled back, and the verified release is not forgotten —
    the next failing deploy goes back to it rather than leaving the app stopped."""
    await register(api, sample_app)
    good = await deployed(api, sample_app)
    sample_app.exits_after(2)  # never binds the port, and fails verify
    deploy_id = await deploy(api, sample_app.name)
    while ("verify", "running") not in step_names(await wait_status(api, deploy_id, {"running"})):
        await asyncio.sleep(0.05)
    with socket.socket() as squatter:  # listens, never answers: health checks time out
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", sample_app.port))
        squatter.listen()
        view = await wait_status(api, deploy_id)
    assert view["status"] == "failed", view
    assert "rollback failed" in view["reason"] and view["rolled_back_to"] is None
    assert step_names(view)[-1] == ("rollback", "failed")
    _, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["release"]["sha"] == good["sha"], rt  # not forgotten

    sample_app.health_status(500)
    view = await wait_status(api, await deploy(api, sample_app.name))
    assert view["status"] == "rolled_back" and view["rolled_back_to"] == good["sha"], view
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == good["sha"]
    assert health_body(sample_app).strip() == f"sha={good['sha']}"
    _, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["release"]["sha"] == good["sha"] and rt["drift"] is False, rt


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


async def test_quick_succession_coalesces_and_the_last_wins(api, sample_app, docker_a):
    await register(api, sample_app)
    shas = [sample_app.healthy(note=f"n{i}") for i in range(5)]
    ids = [await deploy(api, sample_app.name, sha=sha) for sha in shas]
    views = [await wait_status(api, i) for i in ids]
    assert views[-1]["status"] == "succeeded" and views[-1]["sha"] == shas[-1]
    assert all(v["status"] == "superseded" for v in views[1:-1]), [v["status"] for v in views]
    assert views[0]["status"] in ("succeeded", "superseded")
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == shas[-1]
    # never two running at once: replay the ledger
    running, peak = set(), 0
    _, page, _ = await api.call("GET", "/api/v1/events?limit=1000", role="reader")
    for e in page["events"]:
        if not e["stream"].startswith("deploy/"):
            continue
        if e["type"] == "DeployStarted":
            running.add(e["stream"])
        elif e["type"] in ("DeploySucceeded", "DeployFailed", "RolledBack", "DeployCancelled",
                           "DeploySuperseded", "DeployInterrupted"):  # fmt: skip
            running.discard(e["stream"])
        peak = max(peak, len(running))
    assert peak == 1


async def test_a_sha_already_deployed_or_queued_is_a_noop_unless_forced(api, sample_app):
    await register(api, sample_app)
    view = await deployed(api, sample_app, sha=sample_app.head)
    status, answer, _ = await api.call(
        "POST", f"/api/v1/apps/{sample_app.name}/deploy", role="deployer", json={"sha": view["sha"]}
    )
    assert status == 200 and answer["noop"] is True and answer["deploy_id"] == view["id"]
    forced = await deployed(api, sample_app, sha=view["sha"], force=True)
    assert forced["id"] != view["id"]


async def test_each_app_lands_on_its_own_engine(api, make_sample_app, docker_a, docker_b):
    one, two = make_sample_app(), make_sample_app()
    await register(api, one, server="a")
    await register(api, two, server="b")
    a_id, b_id = await deploy(api, one.name), await deploy(api, two.name)
    assert (await wait_status(api, a_id))["status"] == "succeeded"
    assert (await wait_status(api, b_id))["status"] == "succeeded"

    def on(url: str, app) -> bool:
        import subprocess

        out = subprocess.run(
            ["docker", "--host", url, "ps", "-aq", "--filter", f"label=kua.app={app.name}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return bool(out)

    assert on(docker_a, one) and not on(docker_b, one)
    assert on(docker_b, two) and not on(docker_a, two)


async def test_cancel_during_a_build_keeps_the_old_container(api, sample_app, docker_a):
    await register(api, sample_app)
    good = await deployed(api, sample_app)
    sample_app.slow_build(30)
    deploy_id = await deploy(api, sample_app.name)
    import asyncio

    while True:
        _, view, _ = await api.call("GET", f"/api/v1/deploys/{deploy_id}")
        if ("build", "running") in step_names(view):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    status, view, _ = await api.call("POST", f"/api/v1/deploys/{deploy_id}/cancel", role="deployer")
    assert status == 200 and view["status"] == "cancelled", view
    assert step_names(view)[-1] == ("build", "failed")
    assert "cancelled by deployer" in view["reason"]
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == good["sha"]
    assert health_body(sample_app).strip() == f"sha={good['sha']}"


async def test_rollback_endpoint_restores_the_recorded_image_without_a_rebuild(
    api, sample_app, docker_a
):
    import subprocess
    import time

    await register(api, sample_app)
    first = await deployed(api, sample_app)
    sample_app.healthy(note="second")
    second = await deployed(api, sample_app)
    # the first release's tag now names the second's image: only the recorded ID is right
    subprocess.run(
        ["docker", "--host", docker_a, "tag", second["image_id"],
         f"kua-{sample_app.name}:{first['sha']}"],
        check=True, capture_output=True,
    )  # fmt: skip
    started = time.monotonic()
    status, answer, _ = await api.call(
        "POST", f"/api/v1/apps/{sample_app.name}/rollback", role="deployer", json={}
    )
    assert status == 202
    view = await wait_status(api, answer["deploy_id"])
    elapsed = time.monotonic() - started
    assert view["status"] == "succeeded" and view["trigger"] == "rollback"
    assert view["sha"] == first["sha"] and view["image_id"] == first["image_id"]
    assert [s for s, _ in step_names(view)] == ["recreate", "verify"]  # no fetch, no build
    stable_s = sample_app.entry("a")["verify"]["stable_s"]
    assert elapsed < 5 + stable_s, elapsed
    from tests.deploy_support import docker_json

    image = docker_json(docker_a, "inspect", "--format", "{{json .Image}}", sample_app.name)
    assert image == first["image_id"] != second["image_id"]
    _, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["release"]["sha"] == first["sha"] and rt["drift"] is False
    status, answer, _ = await api.call(
        "POST", f"/api/v1/apps/{sample_app.name}/rollback", role="deployer",
        json={"to": second["sha"][:10]},
    )  # fmt: skip
    view = await wait_status(api, answer["deploy_id"])
    assert view["status"] == "succeeded" and view["image_id"] == second["image_id"]


async def test_secret_reference_reaches_the_container_and_nothing_else(
    tmp_path, docker_a, sample_app, caplog
):
    import logging

    from kuadeploy.config import SecretsConfig

    caplog.set_level(logging.DEBUG)  # every logger, the server's own included
    secret_value = "s3cr3t-" + "x7Qz" * 6
    secrets_dir = tmp_path / "secrets" / "web"
    secrets_dir.mkdir(parents=True)
    (secrets_dir / "db").write_text(secret_value + "\n")
    data = tmp_path / "data"
    provider = SecretsConfig(dir=str(tmp_path / "secrets"))
    async with deploy_service(data, docker_a, secrets=provider) as api:
        container = {
            "name": sample_app.name,
            "network_mode": "host",
            "env": {"DB_PASSWORD": {"secret": "web/db"}, "PLAIN": "1"},
        }
        await register(api, sample_app, container=container)
        view = await deployed(api, sample_app)
        responses = [view]
        for path in (
            f"/api/v1/apps/{sample_app.name}",
            f"/api/v1/apps/{sample_app.name}/history",
            f"/api/v1/apps/{sample_app.name}/runtime-status",
            f"/api/v1/apps/{sample_app.name}/progress",
            "/api/v1/registry/export",
            "/api/v1/events?limit=1000",
            f"/api/v1/deploys/{view['id']}",
        ):
            status, body, _ = await api.call("GET", path)
            assert status == 200
            responses.append(body)
        # the deploy has ended, so its stream ends too: read to its end
        status, sse, _ = await api.call("GET", f"/api/v1/deploys/{view['id']}/stream")
        assert status == 200 and b"event: DeploySucceeded" in sse
        assert secret_value.encode() not in sse
    logged = caplog.records  # captured, DEBUG included
    assert any(r.name.startswith("kuadeploy.") for r in logged)
    assert any(r.levelno == logging.DEBUG for r in logged)
    assert secret_value not in caplog.text
    from tests.deploy_support import docker_json

    env = docker_json(docker_a, "inspect", "--format", "{{json .Config.Env}}", sample_app.name)
    assert f"DB_PASSWORD={secret_value}" in env
    import json

    assert secret_value not in json.dumps(responses)
    for path in data.rglob("*"):
        if path.is_file():
            assert secret_value.encode() not in path.read_bytes(), path


async def test_a_missing_secret_fails_at_fetch(tmp_path, docker_a, sample_app):
    from kuadeploy.config import SecretsConfig

    provider = SecretsConfig(dir=str(tmp_path))
    async with deploy_service(tmp_path / "d", docker_a, secrets=provider) as api:
        container = {"name": sample_app.name, "env": {"K": {"secret": "nope"}}}
        await register(api, sample_app, container=container)
        view = await wait_status(api, await deploy(api, sample_app.name))
        assert view["status"] == "failed" and step_names(view) == [("fetch", "failed")]
        assert "secret 'nope' not found" in view["reason"]


async def run_cli_async(*args: str) -> tuple[int, str, str]:
    """The CLI as a subprocess, without blocking the in-process server's loop."""
    import asyncio
    import os
    import sys

    from tests.support import ROOT

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kuadeploy", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_deploy_follow_shows_steps_and_exits_by_the_verdict(api, sample_app):
    await register(api, sample_app)
    client = ("--url", api.base, "--token", "t-deployer")
    rc, out, err = await run_cli_async("deploy", sample_app.name, "--follow", *client)
    assert rc == 0, out + err
    lines = out.splitlines()
    assert lines[0].endswith("queued")
    assert any("build" in line and " ok " in line for line in lines)
    assert any("verify" in line and " ok" in line for line in lines)
    assert lines[-1].endswith(": succeeded")
    assert all(line.startswith("[") for line in lines[1:-1])

    sample_app.broken_dockerfile()
    rc, out, _ = await run_cli_async("deploy", sample_app.name, "--follow", *client)
    assert rc == 1 and "FAILED" in out and ": failed" in out.splitlines()[-1]
    rc, out, _ = await run_cli_async("deploy", sample_app.name, *client)  # no --follow
    lines = out.splitlines()
    assert rc == 1 and len(lines) == 2, out  # waited for the verdict, steps not shown
    assert lines[0].endswith("queued") and ": failed" in lines[1]

    rc, out, err = await run_cli_async("deploy", sample_app.name, *client[:2], "--token", "bad")
    assert rc == 2 and err.startswith("kuadeploy: unauthorized")


TERMINAL_EVENTS = {
    "DeploySucceeded", "DeployFailed", "RolledBack", "DeployCancelled", "DeploySuperseded",
    "DeployInterrupted",
}  # fmt: skip


async def terminal_events(api, deploy_id: str) -> list[str]:
    _, page, _ = await api.call("GET", "/api/v1/events?limit=1000", role="reader")
    return [
        e["type"]
        for e in page["events"]
        if e["stream"] == f"deploy/{deploy_id}" and e["type"] in TERMINAL_EVENTS
    ]


async def wait_step(api, deploy_id: str, step: tuple[str, str]) -> None:
    import asyncio

    while step not in step_names((await api.call("GET", f"/api/v1/deploys/{deploy_id}"))[1]):
        await asyncio.sleep(0.1)


async def test_cancel_during_verify_restores_the_previous_release(api, sample_app, docker_a):
    await register(api, sample_app)
    good = await deployed(api, sample_app)
    entry = sample_app.entry("a")
    entry["verify"]["stable_s"] = 4  # the window the cancel lands in (rollback waits it too)
    await api.call("PUT", f"/api/v1/apps/{sample_app.name}", json=entry)
    sample_app.healthy(note="never verified")
    deploy_id = await deploy(api, sample_app.name)
    await wait_step(api, deploy_id, ("verify", "running"))
    status, view, _ = await api.call("POST", f"/api/v1/deploys/{deploy_id}/cancel", role="deployer")
    # answered once the cancel is recorded and the restore has begun, not after it
    assert status == 200 and view["status"] == "running", view
    assert ("verify", "failed") in step_names(view)
    view = await wait_status(api, deploy_id)
    # after the switch a cancel ends as the rollback does: one outcome, naming the cancel
    assert view["status"] == "rolled_back", view
    assert view["reason"].startswith("cancelled by deployer during verify;"), view["reason"]
    assert view["rolled_back_to"] == good["sha"]
    assert ("rollback", "succeeded") in step_names(view)
    assert await terminal_events(api, deploy_id) == ["RolledBack"]
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == good["sha"]
    _, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["release"]["sha"] == good["sha"] and rt["drift"] is False


async def test_a_second_cancel_does_not_interrupt_the_first_ones_rollback(
    api, sample_app, docker_a
):
    import asyncio

    await register(api, sample_app)
    good = await deployed(api, sample_app)
    entry = sample_app.entry("a")
    entry["verify"]["stable_s"] = 4  # the rollback's verify waits this: the second cancel's window
    await api.call("PUT", f"/api/v1/apps/{sample_app.name}", json=entry)
    sample_app.health_status(500)
    deploy_id = await deploy(api, sample_app.name)
    await wait_step(api, deploy_id, ("verify", "running"))
    cancel = f"/api/v1/deploys/{deploy_id}/cancel"
    first = asyncio.ensure_future(api.call("POST", cancel, role="deployer"))
    await wait_step(api, deploy_id, ("rollback", "running"))
    status, problem, _ = await api.call("POST", cancel, role="deployer")
    assert status == 409 and "already being cancelled" in problem["detail"], problem
    status, _view, _ = await first
    assert status == 200
    view = await wait_status(api, deploy_id, timeout=30)
    assert view["status"] == "rolled_back", view
    assert ("rollback", "succeeded") in step_names(view)
    assert await terminal_events(api, deploy_id) == ["RolledBack"]
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == good["sha"]
    status, problem, _ = await api.call("POST", cancel, role="deployer")
    assert status == 409 and "already ended (rolled_back)" in problem["detail"]


async def test_a_cancel_during_a_failures_rollback_is_refused(api, sample_app, docker_a):
    await register(api, sample_app)
    good = await deployed(api, sample_app)
    entry = sample_app.entry("a")
    entry["verify"].update(timeout_s=2, stable_s=4)
    await api.call("PUT", f"/api/v1/apps/{sample_app.name}", json=entry)
    sample_app.health_status(500)
    deploy_id = await deploy(api, sample_app.name)
    await wait_step(api, deploy_id, ("rollback", "running"))
    status, problem, _ = await api.call(
        "POST", f"/api/v1/deploys/{deploy_id}/cancel", role="deployer"
    )
    assert status == 409 and "rolling back" in problem["detail"], problem
    view = await wait_status(api, deploy_id, timeout=30)
    assert view["status"] == "rolled_back" and view["reason"].startswith("verify failed")
    assert await terminal_events(api, deploy_id) == ["RolledBack"]
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == good["sha"]


@pytest.mark.parametrize("change", ["removed", "renamed"])
async def test_an_app_removed_or_renamed_during_its_deploy_is_not_switched(
    api, sample_app, docker_a, change
):
    import subprocess

    await register(api, sample_app)
    good = await deployed(api, sample_app)
    sample_app.slow_build(4)
    deploy_id = await deploy(api, sample_app.name)
    await wait_step(api, deploy_id, ("build", "running"))
    path = f"/api/v1/apps/{sample_app.name}"
    if change == "removed":
        status, _body, _ = await api.call("DELETE", path)
    else:
        status, _body, _ = await api.call(
            "PATCH",
            path,
            data=b'{"container": {"name": "elsewhere"}}',
            headers={"Content-Type": "application/merge-patch+json"},
        )
    assert status in (200, 204)
    view = await wait_status(api, deploy_id, timeout=60)
    assert view["status"] == "cancelled", view
    reason = "no longer registered" if change == "removed" else "container was renamed"
    assert reason in view["reason"], view["reason"]
    assert "recreate" not in [name for name, _ in step_names(view)]
    assert await terminal_events(api, deploy_id) == ["DeployCancelled"]
    # the running container was left alone, and no other one was started
    labels = container_labels(docker_a, sample_app.name)
    assert labels["kua.sha"] == good["sha"] and labels["kua.deploy"] == good["id"]
    names = subprocess.run(
        ["docker", "--host", docker_a, "ps", "-a", "--format", "{{.Names}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "elsewhere" not in names


async def test_only_the_newest_keep_releases_images_are_kept(api, sample_app, docker_a):
    import subprocess

    await register(api, sample_app, keep_releases=2)
    views = []
    for i in range(4):
        sample_app.healthy(note=f"release {i}")
        views.append(await deployed(api, sample_app))
    listed = subprocess.run(
        ["docker", "--host", docker_a, "images", "-q", "--no-trunc", "--filter",
         f"label=kua.app={sample_app.name}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert set(listed) == {views[3]["image_id"], views[2]["image_id"]}
    _, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert [r["image_id"] for r in rt["releases"]] == [views[3]["image_id"], views[2]["image_id"]]
    status, answer, _ = await api.call(
        "POST", f"/api/v1/apps/{sample_app.name}/rollback", role="deployer", json={}
    )
    view = await wait_status(api, answer["deploy_id"])
    assert view["status"] == "succeeded" and view["image_id"] == views[2]["image_id"]
    status, body, _ = await api.call(
        "POST", f"/api/v1/apps/{sample_app.name}/rollback", role="deployer",
        json={"to": views[0]["sha"]},
    )  # fmt: skip
    assert status == 404 and "no retained release" in body["detail"]


async def test_cli_deploy_of_the_running_verified_release_exits_0(api, sample_app, docker_a):
    import subprocess

    await register(api, sample_app)
    client = ("--url", api.base, "--token", "t-deployer")
    rc, out, err = await run_cli_async("deploy", sample_app.name, *client)
    assert rc == 0, out + err
    head = sample_app.head
    # the branch head unchanged, with and without --follow, and the same --sha: all done
    for extra in ((), ("--follow",), ("--sha", head)):
        rc, out, err = await run_cli_async("deploy", sample_app.name, *extra, *client)
        assert rc == 0, out + err
        assert "nothing to do" in out and head in out, out
    last = out.splitlines()[-1]
    assert last.endswith(": succeeded")  # --sha: the API's no-op names the verified deploy
    rc, out, _ = await run_cli_async("deploy", sample_app.name, *client)
    assert out.splitlines()[-1].endswith(
        f"nothing to do — {head} is already the verified, running release"
    )

    # the verified release is not running: "nothing to do" would be wrong, so exit 1
    subprocess.run(["docker", "--host", docker_a, "stop", "-t", "0", sample_app.name], check=True,
                   capture_output=True)  # fmt: skip
    rc, out, _ = await run_cli_async("deploy", sample_app.name, *client)
    assert rc == 1 and ": cancelled — " in out.splitlines()[-1], out


async def test_runtime_status_reports_a_removed_or_impostor_container_as_drift(
    api, sample_app, docker_a
):
    import subprocess

    await register(api, sample_app)
    first = await deployed(api, sample_app)
    sample_app.healthy(note="second")
    second = await deployed(api, sample_app)
    path = f"/api/v1/apps/{sample_app.name}/runtime-status"

    def docker(*args: str) -> None:
        subprocess.run(["docker", "--host", docker_a, *args], check=True, capture_output=True)

    docker("rm", "-f", sample_app.name)
    _, rt, _ = await api.call("GET", path)
    assert rt["release"]["sha"] == second["sha"]
    assert rt["container"] is None and rt["drift"] is True, rt

    # the same name and the release's kua.sha label, but the first release's image
    docker("run", "-d", "--name", sample_app.name, "--network", "host",
           "--label", f"kua.sha={second['sha']}", first["image_id"])  # fmt: skip
    _, rt, _ = await api.call("GET", path)
    assert rt["container"]["sha"] == second["sha"] and rt["container"]["running"] is True
    assert rt["container"]["image_id"] == first["image_id"]
    assert rt["drift"] is True, rt
