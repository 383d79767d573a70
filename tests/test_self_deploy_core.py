"""The pure parts of the self-deploy: who records what at start-up, and what the new
and the transient containers carry over from the running one. No engine needed."""

from __future__ import annotations

import msgspec
import pytest

from kuadeploy import events as ev
from kuadeploy.selfdeploy.decide import Instance, handoff_of, resolve
from kuadeploy.selfdeploy.instance import container_id_in
from kuadeploy.selfdeploy.spec import image_reference, recreate_body, transient_body
from projections.deploys import fold_deploy
from projections.runtime import Runtime, fold_runtime, last_verified

A, B = "a" * 40, "b" * 40
IMG_A, IMG_B = "sha256:" + "1" * 64, "sha256:" + "2" * 64
CID_A, CID_B = "c" * 64, "d" * 64

HANDOFF = ev.SelfHandoffStarted(
    app="kuadeploy",
    server="local",
    container="kuadeploy",
    container_id=CID_A,
    sha=B,
    image_id=IMG_B,
    previous_sha=A,
    previous_image_id=IMG_A,
    transient="kuadeploy-handoff-d1",
    health_url="http://127.0.0.1:8080/healthz",
    timeout_s=60,
    stable_s=5,
    stop_timeout_s=30,
)


def _fold(*datas: ev.EventData):
    """Fold a deploy stream: requested, started, build, recreate started, hand-off, …"""
    head = [
        ev.DeployRequested("kuadeploy", "api", sha=B),
        ev.DeployStarted("kuadeploy", B),
        ev.StepStarted("kuadeploy", "recreate"),
        HANDOFF,
    ]
    view, runtime = None, Runtime()
    for seq, data in enumerate([*head, *datas], start=1):
        envelope = ev.envelope(
            data,
            seq=seq,
            ts=f"2026-01-01T00:00:{seq:02d}.000000Z",
            stream="deploy/d1",
            version=seq,
            actor="system",
        )
        view = fold_deploy(view, envelope)
        runtime = fold_runtime(runtime, envelope)
    assert view is not None
    return view, runtime.apps.get("kuadeploy")


def test_self_deploy_handoff_is_running_until_an_instance_decides() -> None:
    view, _ = _fold()
    assert view.status == "running"
    assert view.handoff is not None and handoff_of(view.handoff) == HANDOFF


def test_self_deploy_only_the_new_instance_records_success() -> None:
    me = Instance(B, CID_B, "kuadeploy", IMG_B)
    outcome = resolve(HANDOFF, me)
    assert [type(d).__name__ for d in outcome] == [
        "StepSucceeded",
        "StepStarted",
        "StepSucceeded",
        "DeploySucceeded",
    ]
    assert outcome[2].detail["instance"] == {
        "git_sha": B,
        "container_id": CID_B,
        "container_name": "kuadeploy",
        "image_id": IMG_B,
    }
    view, runtime = _fold(*outcome)
    assert view.status == "succeeded" and view.sha == B and view.image_id == IMG_B
    assert [(s.name, s.status) for s in view.steps] == [
        ("recreate", "succeeded"),
        ("verify", "succeeded"),
    ]
    assert runtime.current.sha == B and runtime.current.image_id == IMG_B
    # Without an engine to ask, the baked SHA alone decides.
    assert isinstance(resolve(HANDOFF, Instance(B))[-1], ev.DeploySucceeded)


def test_self_deploy_restored_previous_instance_records_failure_and_rollback() -> None:
    outcome = resolve(HANDOFF, Instance(A, CID_A, "kuadeploy", IMG_A))
    assert [type(d).__name__ for d in outcome] == [
        "StepFailed",
        "DeployFailed",
        "RollbackStarted",
        "RolledBack",
    ]
    view, runtime = _fold(*outcome)
    assert view.status == "rolled_back" and view.rolled_back_to == A
    assert runtime.current.sha == A and runtime.current.image_id == IMG_A


@pytest.mark.parametrize(
    "me",
    [
        Instance(B, CID_B, "kuadeploy", IMG_A),  # the target SHA on another image
        Instance(B, CID_B, "elsewhere", IMG_B),  # in another container
        Instance("c" * 40),  # neither release
        Instance("unknown"),
    ],
)
def test_self_deploy_anyone_else_never_records_success(me: Instance) -> None:
    outcome = resolve(HANDOFF, me)
    assert not any(isinstance(d, ev.DeploySucceeded | ev.RolledBack) for d in outcome)
    view, runtime = _fold(*outcome)
    assert view.status == "failed" and last_verified(runtime) is None  # nothing verified


def test_self_deploy_container_id_from_mountinfo() -> None:
    line = "612 590 254:1 /var/lib/docker/containers/{}/hostname /etc/hostname rw - ext4 rw\n"
    assert container_id_in(line.format(CID_A)) == CID_A
    assert container_id_in("25 1 0:23 / /proc rw - proc proc rw\n") is None


# --- carrying the running container over ----------------------------------------------


OLD_IMAGE = {
    "Id": IMG_A,
    "Config": {
        "Env": ["PATH=/opt/venv/bin:/usr/bin", "KUA_GIT_SHA=" + A, "KUA_DATA_DIR=/app/data"],
        "Labels": {"org.opencontainers.image.revision": A, "org.opencontainers.image.title": "k"},
        "Entrypoint": ["kuadeploy"],
        "Cmd": ["serve"],
        "User": "kua",
        "WorkingDir": "/app",
        "Volumes": {"/app/data": {}},
        "ExposedPorts": {"8080/tcp": {}},
        "Healthcheck": {"Test": ["CMD", "true"]},
    },
}

OLD_CONTAINER = {
    "Id": CID_A,
    "Name": "/kuadeploy",
    "Image": IMG_A,
    "Config": {
        "Env": [
            *OLD_IMAGE["Config"]["Env"],
            "KUA_CONFIG=/app/kuadeploy.toml",
            "KUA_LISTEN=127.0.0.1:8081",
        ],
        "Labels": {
            **OLD_IMAGE["Config"]["Labels"],
            "com.docker.compose.service": "kuadeploy",
            "kua.app": "kuadeploy",
            "kua.sha": A,
            "kua.deploy": "old",
        },
        "Entrypoint": ["kuadeploy"],
        "Cmd": ["serve"],
        "User": "kua",
        "WorkingDir": "/app",
        "Volumes": {"/app/data": {}},
        "ExposedPorts": {"8080/tcp": {}},
        "Healthcheck": {"Test": ["CMD", "true"]},
        "Tty": False,
        "OpenStdin": False,
    },
    "HostConfig": {
        "Binds": ["/var/run/docker.sock:/var/run/docker.sock", "/etc/kua.toml:/app/kua.toml:ro"],
        "NetworkMode": "host",
        "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
        "GroupAdd": ["998"],
        "AutoRemove": False,
        "PortBindings": {},
    },
    "Mounts": [
        {"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/var/run/docker.sock"},
        {"Type": "volume", "Name": "f00d" * 16, "Destination": "/app/data", "RW": True},
    ],
    "NetworkSettings": {"Networks": {"host": {}}},
}

NEW_LABELS = {"kua.app": "kuadeploy", "kua.sha": B, "kua.deploy": "d1"}


def test_self_deploy_new_container_keeps_the_configuration_not_the_old_image() -> None:
    body = recreate_body(OLD_CONTAINER, OLD_IMAGE, new_image=IMG_B, labels=NEW_LABELS)
    assert body["Image"] == IMG_B
    # What the operator set stays; what image A baked (above all its SHA) goes.
    assert body["Env"] == ["KUA_CONFIG=/app/kuadeploy.toml", "KUA_LISTEN=127.0.0.1:8081"]
    assert body["Labels"] == {"com.docker.compose.service": "kuadeploy", **NEW_LABELS}
    for key in ("Entrypoint", "Cmd", "User", "WorkingDir", "Healthcheck", "Volumes"):
        assert key not in body, key  # the new image's own
    host = body["HostConfig"]
    assert host["NetworkMode"] == "host" and host["GroupAdd"] == ["998"]
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    # The anonymous data volume goes along by name: the ledger stays.
    assert host["Binds"] == [*OLD_CONTAINER["HostConfig"]["Binds"], f"{'f00d' * 16}:/app/data"]
    assert "NetworkingConfig" not in body


def test_self_deploy_operator_overrides_are_kept() -> None:
    container = msgspec.json.decode(msgspec.json.encode(OLD_CONTAINER))
    container["Config"].update(Cmd=["serve", "--config", "/x.toml"], User="0:998")
    container["Config"]["Env"].append("KUA_GIT_SHA=" + A)  # a stale explicit SHA
    container["HostConfig"].update(NetworkMode="kua-net", Binds=["data:/app/data"])
    container["NetworkSettings"] = {
        "Networks": {"kua-net": {"Aliases": [CID_A[:12], "kua"], "IPAMConfig": None}}
    }
    body = recreate_body(container, OLD_IMAGE, new_image=IMG_B, labels=NEW_LABELS)
    assert body["Cmd"] == ["serve", "--config", "/x.toml"]
    assert body["Entrypoint"] == ["kuadeploy"]
    assert body["User"] == "0:998"
    assert not any(e.startswith("KUA_GIT_SHA=") for e in body["Env"])
    assert body["HostConfig"]["Binds"] == ["data:/app/data"]  # the volume is covered
    assert body["NetworkingConfig"] == {
        "EndpointsConfig": {"kua-net": {"Aliases": ["kua"], "IPAMConfig": None}}
    }


def test_self_deploy_transient_container_runs_once_and_removes_itself() -> None:
    body = transient_body(
        OLD_CONTAINER,
        OLD_IMAGE,
        new_image=IMG_B,
        labels=NEW_LABELS,
        command=["self-handoff", "--deploy", "d1"],
    )
    assert body["Image"] == IMG_B
    assert body["Entrypoint"] == ["kuadeploy"]
    assert body["Cmd"] == ["self-handoff", "--deploy", "d1"]
    assert body["Labels"]["kua.role"] == "self-handoff"
    host = body["HostConfig"]
    assert host["AutoRemove"] is True and host["RestartPolicy"]["Name"] == "no"
    assert host["NetworkMode"] == "host" and host["GroupAdd"] == ["998"]
    # The same socket, config and ledger as the orchestrator.
    assert "/var/run/docker.sock:/var/run/docker.sock" in host["Binds"]
    assert f"{'f00d' * 16}:/app/data" in host["Binds"]
    assert "KUA_CONFIG=/app/kuadeploy.toml" in body["Env"]
    assert body["Healthcheck"] == {"Test": ["NONE"]}


@pytest.mark.parametrize(
    ("image", "ref"),
    [
        ("kuadeploy:latest", ("kuadeploy", "latest")),
        ("kuadeploy", ("kuadeploy", "latest")),
        ("registry.local:5000/infra/kuadeploy", ("registry.local:5000/infra/kuadeploy", "latest")),
        ("registry.local:5000/kuadeploy:v2", ("registry.local:5000/kuadeploy", "v2")),
        (IMG_A, None),
        ("kuadeploy@sha256:" + "1" * 64, None),
    ],
)
def test_self_deploy_moves_the_image_name_the_container_was_made_from(image, ref) -> None:
    assert image_reference({"Config": {"Image": image}}) == ref


# --- the pipeline around it (in-process service, real engine) --------------------------


async def test_self_deploy_outside_a_container_is_refused_before_anything_changes(
    tmp_path, docker_a, sample_app
) -> None:
    """A self-deploy replaces the container kuadeploy runs in; a server on the host has
    none, so the deploy fails at recreate with the old release untouched."""
    from tests.deploy_support import deploy, deploy_service, register, wait_status

    async with deploy_service(tmp_path / "data", docker_a) as api:
        await register(api, sample_app)
        first = await wait_status(api, await deploy(api, sample_app.name))
        assert first["status"] == "succeeded", first
        status, body, _ = await api.call(
            "PATCH", f"/api/v1/apps/{sample_app.name}", json={"mode": "self"}
        )
        assert status == 200, body
        sample_app.healthy(note="next")
        view = await wait_status(api, await deploy(api, sample_app.name))
        assert view["status"] == "failed", view
        recreate = view["steps"][-1]
        assert recreate["name"] == "recreate" and recreate["status"] == "failed"
        assert "does not run in a container" in recreate["detail"]["error"]
        assert view["handoff"] is None  # refused before the hand-off record
        _, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
        assert rt["release"]["sha"] == first["sha"] and rt["container"]["sha"] == first["sha"]
        assert rt["drift"] is False


def test_self_deploy_build_args_are_checked() -> None:
    from kuadeploy.validation import validate_entry

    base = {"server": "local", "repo": "https://x/y.git", "branch": "main"}
    entry, problems = validate_entry({**base, "build_args": {"BASE_IMAGE": "b:1"}}, {"local"})
    assert problems == [] and entry is not None and entry.build_args == {"BASE_IMAGE": "b:1"}
    _, problems = validate_entry(
        {**base, "build_args": {"GIT_SHA": "x", "1bad": "y", "N": 3}}, {"local"}
    )
    assert {p.path for p in problems} == {
        "$.build_args.GIT_SHA",
        "$.build_args.1bad",
        "$.build_args.N",  # the key of the value of the wrong type
    }, problems
