"""The transient container's own decisions, against a real engine: what it leaves
behind when the new instance recorded its success yet failed the transient's check."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import pytest

from kuadeploy import events as ev
from kuadeploy.adapters.docker import Engine
from kuadeploy.ledger import NewEvent
from kuadeploy.selfdeploy.transient import Handoff
from tests.api_support import make_config, running
from tests.image_support import docker

pytestmark = pytest.mark.docker
A, B = "a" * 40, "b" * 40
# PID 1 that stops at once on SIGTERM
IDLE = "trap 'exit 0' TERM; while :; do sleep 1; done"


def _image(engine: str, tmp: Path, tag: str, sha: str) -> str:
    ctx = tmp / sha[:4]
    (ctx / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", ctx / "bin" / "busybox")
    for tool in ("sh", "sleep"):
        (ctx / "bin" / tool).symlink_to("busybox")
    (ctx / "Dockerfile").write_text(
        f'FROM scratch\nCOPY bin/ /bin/\nENV KUA_GIT_SHA={sha}\nCMD ["/bin/sh", "-c", "{IDLE}"]\n'
    )
    docker(engine, "build", "-q", "-t", tag, str(ctx))
    return docker(engine, "image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()


async def test_a_new_instance_kept_after_a_failed_check_also_gets_the_image_name(
    docker_a: str, tmp_path: Path
) -> None:
    """The new instance recorded its success, then restarted during the transient's
    stable period: it stays the release. The image name the old container was made
    from (compose's `kuadeploy:latest`) must then name it too, or the next
    `docker-compose up` puts the previous release back under a ledger that says B."""
    name = f"kua-sd-{secrets.token_hex(4)}"
    ref = f"{name}:current"
    img_b = _image(docker_a, tmp_path, f"{name}:b", B)
    img_a = _image(docker_a, tmp_path, ref, A)
    aside = f"{name}-previous-d1"
    try:
        old_id = docker(docker_a, "create", "--name", aside, ref).stdout.strip()
        docker(docker_a, "run", "-d", "--name", name, img_b)
        h = ev.SelfHandoffStarted(
            app="kuadeploy", server="local", container=name, container_id=old_id,
            sha=B, image_id=img_b, previous_sha=A, previous_image_id=img_a,
            transient=f"{name}-handoff-d1", health_url="http://127.0.0.1:9/healthz",
            timeout_s=1, stable_s=1, stop_timeout_s=1,
        )  # fmt: skip
        config = make_config(tmp_path / "data")
        async with running(config) as api:  # what B recorded before it restarted
            stream = [
                ev.DeployRequested("kuadeploy", "api", sha=B),
                ev.DeployStarted("kuadeploy", B),
                ev.StepStarted("kuadeploy", "recreate"),
                h,
                ev.StepSucceeded("kuadeploy", "recreate", {}),
                ev.StepStarted("kuadeploy", "verify"),
                ev.StepSucceeded("kuadeploy", "verify", {"recorded_by": "new instance"}),
                ev.DeploySucceeded("kuadeploy", B, img_b, None),
            ]
            batch = [NewEvent("deploy/d1", stream[0], 0)]
            batch += [NewEvent("deploy/d1", d) for d in stream[1:]]
            await api.service.ledger.append(batch, actor="system")

        async with Engine(docker_a) as engine:
            handoff = Handoff(engine, config, h, "d1")
            old = await engine.inspect_container_raw(old_id)
            assert old is not None
            handoff.old = old  # what run() read before it stopped the old container
            assert await handoff.restore("container restarted 1 time(s)") == 0

        running_now = docker(docker_a, "inspect", "-f", "{{.State.Running}}", name).stdout
        assert running_now.strip() == "true"  # B stays
        assert docker(docker_a, "ps", "-aq", "--filter", f"name=^{aside}$").stdout == ""
        named = docker(docker_a, "image", "inspect", "-f", "{{.Id}}", ref).stdout.strip()
        assert named == img_b, "the image name still names the previous release"
    finally:
        docker(docker_a, "rm", "-f", name, aside, check=False)
        docker(docker_a, "rmi", "-f", ref, f"{name}:b", img_a, img_b, check=False)
