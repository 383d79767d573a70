"""Deploy pipeline edge cases found in an audit, on a real engine and real git."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from kuadeploy import events as ev
from tests.deploy_support import (
    container_labels,
    deploy,
    deploy_service,
    register,
    step_names,
    wait_status,
    when_recorded,
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

    def cancel(deploy: str):
        return api.call("POST", f"/api/v1/deploys/{deploy}/cancel", role="deployer")

    with when_recorded(api, ev.DeploySucceeded, cancel, deploy_id) as answers:
        view = await wait_status(api, deploy_id)
        assert answers, view
        status, answer, _ = await answers[0]
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
    stop = api.service.runner.close
    with when_recorded(api, ev.DeploySucceeded, lambda _: stop(), deploy_id) as closing:
        await wait_status(api, deploy_id)
        assert closing
        await closing[0]
    view = await wait_status(api, deploy_id)
    assert view["status"] == "succeeded", view
    _, page, _ = await api.call("GET", "/api/v1/events?limit=1000", role="reader")
    types = [e["type"] for e in page["events"] if e["stream"] == f"deploy/{deploy_id}"]
    assert types[-1] == "DeploySucceeded", types


def test_sigkill_mid_migration_leaves_no_migration_running(tmp_path, docker_a, sample_app):
    """A migration runs in a one-off container; when kuadeploy dies under it, the
    restart must not leave it running on its own (the next deploy would run a second
    migration beside it)."""
    from tests.test_deploy_crash import Server, finished, in_step

    server = Server(tmp_path, docker_a)
    server.start()
    try:
        entry = sample_app.entry("a")
        entry["migrations"]["approval"] = "auto"
        server.register(sample_app.name, entry)
        assert server.wait(server.deploy(sample_app.name), finished)["status"] == "succeeded"
        sample_app.commit(
            {"migrations/0001.sql": "-- slow\n", "migrate": "#!/bin/sh\nsleep 60\n"}, "slow"
        )
        victim = server.deploy(sample_app.name)
        server.wait(victim, in_step("migrate"))
        server.kill()
        server.start()
        view = server.wait(victim, finished)
        assert view["status"] == "interrupted", view
        names = subprocess.run(
            ["docker", "--host", docker_a, "ps", "-a", "--format", "{{.Names}}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert [n for n in names if n.startswith(f"{sample_app.name}-once-")] == [], names
    finally:
        server.stop()


async def test_a_cancel_as_the_runner_picks_a_deploy_up_ends_it(api, sample_app):
    """A cancel landing in the loop turn where the worker has made the deploy's task
    but the task has not begun: the deploy must end cancelled. It used to cancel the
    task before its first line ran, so nothing was recorded: the deploy stayed queued
    (to run at the next start) and the cancel answered 200 with it still queued."""
    await register(api, sample_app)
    cancel = api.service.cancel_deploy
    with when_recorded(api, ev.DeployRequested, lambda d: cancel(d, "deployer")) as cancels:
        deploy_id = await deploy(api, sample_app.name)
        await asyncio.gather(*cancels, return_exceptions=True)
    view = await wait_status(api, deploy_id, timeout=20)
    assert view["status"] == "cancelled", view
    later = await wait_status(api, await deploy(api, sample_app.name))
    assert later["status"] == "succeeded", later


def test_a_branch_deleted_and_reborn_as_a_directory_does_not_break_every_fetch(tmp_path):
    """`release` deleted on the forge and `release/v2` pushed (a common rename): the
    mirror's stale `release` ref blocked the new one, and libgit2 failed the fetch
    before its prune — this fetch and every later one, for every branch of the app."""
    from kuadeploy.adapters import git as kgit
    from tests.fixtures.testapp import git

    origin, work = tmp_path / "origin.git", tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", "--initial-branch=main", str(origin))
    git(tmp_path, "init", "-q", "--initial-branch=main", str(work))
    git(work, "commit", "-q", "--allow-empty", "-m", "one")
    git(work, "push", "-q", str(origin), "main", "main:release")
    mirror_dir = tmp_path / "mirror"
    kgit.Mirror.sync(str(origin), mirror_dir)
    git(work, "push", "-q", str(origin), ":release")
    git(work, "commit", "-q", "--allow-empty", "-m", "two")
    git(work, "push", "-q", str(origin), "main", "main:release/v2")
    head = git(work, "rev-parse", "HEAD")
    for _ in range(2):
        mirror = kgit.Mirror.sync(str(origin), mirror_dir)
        assert mirror.branch_head("main") == head
        assert mirror.branch_head("release/v2") == head
        with pytest.raises(kgit.RefNotFound):
            mirror.branch_head("release")


def test_rollback_to_must_name_one_retained_release() -> None:
    """`to` is checked like a deploy's `sha`: "" used to match every release and pick
    the newest (the current one: a "rollback" that changes nothing), and a prefix of
    several releases silently picked the newest of them."""
    from kuadeploy.commands.deploys import decide_rollback
    from kuadeploy.errors import ApiError
    from projections.runtime import AppRuntime, Release, Runtime

    old, other, current = "abcd" + "1" * 36, "abcd" + "2" * 36, "f" * 40
    releases = {f"sha256:{n}": Release(sha, f"sha256:{n}", f"d{n}", "t") for n, sha in
                enumerate((old, other, current))}  # fmt: skip
    newest = releases["sha256:2"]
    runtime = Runtime(
        apps={"web": AppRuntime(current=newest, releases=releases, last_verified=newest)}
    )
    for to, status in (("", 422), ("a", 422), ("zzzz", 422), ("abcd", 409), ("abce", 404)):
        with pytest.raises(ApiError) as raised:
            decide_rollback("web", runtime, to, 5)
        assert raised.value.status == status, (to, raised.value)
    assert decide_rollback("web", runtime, "ABCD1", 5) == (old, "sha256:0")
    assert decide_rollback("web", runtime, None, 5) == (other, "sha256:1")
