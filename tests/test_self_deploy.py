"""Self-deploy (issue 6): kuadeploy, running as a container of the private engine,
deploys itself from commit A to B through a transient container, and comes back to
A when B cannot start.

A test repository holds this project's source with its wheelhouse (so every build
is offline); commits A (as is), B (a change outside the image: every layer is
cached but the SHA's) and B' (the same, with a server that exits at once). Image A
is built once per module with scripts/build-image; the orchestrator's own pipeline
builds B and B' with `build_args` naming the local base image. The orchestrator
container runs like docker-compose.yml has it: unprivileged with the socket's group,
network host, a named data volume, the config mounted read-only, a restart policy.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kuadeploy.tokens import token_hash
from tests.fixtures.testapp import git
from tests.image_support import (
    BASE_IMAGE,
    ROOT,
    build_image,
    docker,
    free_port,
    http,
    prepare_base,
    wait_healthz,
)

pytestmark = pytest.mark.docker
TOKEN = "t-self-admin"
REPO_IN_CONTAINER = "/srv/kuadeploy.git"
KUA_UID = 10001  # the image's user (Dockerfile)
HANDOFF = "label=kua.role=self-handoff"
DEPLOY_TIMEOUT_S = 240


@dataclass
class Source:
    bare: Path
    work: Path
    a: str  # this project as it is
    b: str  # a change outside the image's context: only the SHA differs
    broken: str  # B', whose server exits at once


def _commit(work: Path, message: str) -> str:
    git(work, "add", "-A")
    git(work, "add", "-f", "wheels")  # ignored in the project, needed offline here
    git(work, "commit", "-q", "-m", message)
    git(work, "push", "-q", "origin", "HEAD:refs/heads/main")
    return git(work, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def source(docker_a: str, tmp_path_factory: pytest.TempPathFactory) -> Source:
    prepare_base(docker_a)  # base image in the engine, wheelhouse in ROOT/wheels
    root = tmp_path_factory.mktemp("self-source")
    bare, work = root / "kuadeploy.git", root / "work"
    git(root, "init", "-q", "--bare", "--initial-branch=main", str(bare))
    git(root, "init", "-q", "--initial-branch=main", str(work))
    git(work, "remote", "add", "origin", str(bare))
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, work / rel)
    shutil.copytree(ROOT / "wheels", work / "wheels")
    a = _commit(work, "A: kuadeploy as it is")
    (work / "CHANGES").write_text("B: a change outside the image context\n")
    b = _commit(work, "B")
    dockerfile = (work / "Dockerfile").read_text()
    assert 'CMD ["serve"]' in dockerfile
    (work / "Dockerfile").write_text(dockerfile.replace('CMD ["serve"]', 'CMD ["serve", "--x"]'))
    broken = _commit(work, "B': the server exits at once (unknown option)")
    # The orchestrator (uid 10001) reads the repository through a bind mount, and
    # libgit2 opens only repositories its user owns.
    subprocess.run(["chown", "-R", f"{KUA_UID}:{KUA_UID}", str(bare)], check=True)
    return Source(bare, work, a, b, broken)


@pytest.fixture(scope="module")
def image_a(docker_a: str, source: Source, tmp_path_factory: pytest.TempPathFactory):
    checkout = tmp_path_factory.mktemp("self-a") / "kuadeploy"
    git(checkout.parent, "clone", "-q", str(source.work), str(checkout))
    git(checkout, "checkout", "-q", source.a)
    tag = f"kuadeploy-selftest:{source.a[:12]}"
    print(build_image(docker_a, checkout, source.a, tag))
    yield tag
    built = docker(docker_a, "images", "-q", "--filter", "label=kua.app=kuadeploy").stdout.split()
    docker(docker_a, "rmi", "-f", tag, *set(built), check=False)  # and what deploys built


class Orchestrator:
    """kuadeploy A as a container of the private engine, and a client of it."""

    def __init__(self, engine: str, image: str, source: Source, tmp: Path):
        self.engine = engine
        suffix = secrets.token_hex(4)
        self.name, self.volume = f"kua-self-{suffix}", f"kua-self-data-{suffix}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.health_url = f"{self.url}/healthz"
        config = tmp / "kuadeploy.toml"
        config.write_text(
            '[servers.local]\ndocker = "unix:///var/run/docker.sock"\n\n'
            "[deploy]\nhealth_poll_s = 0.1\n\n"
            f'[[tokens]]\nactor = "ci"\nrole = "admin"\nsha256 = "{token_hash(TOKEN)}"\n'
        )
        config.chmod(0o644)
        sock = engine.removeprefix("unix://")
        # Run by a name of its own, as compose's `kuadeploy:latest`: a self-deploy
        # moves that name to the release it verified.
        self.image_ref = f"{self.name}:current"
        docker(engine, "tag", image, self.image_ref)
        self.image_a = self.image_id()
        docker(
            engine,
            "run",
            "-d",
            "--name",
            self.name,
            "--network",
            "host",
            "--restart",
            "unless-stopped",
            "--group-add",
            str(os.stat(sock).st_gid),
            "--label",
            "test.kua=self-deploy",
            "-e",
            f"KUA_LISTEN=127.0.0.1:{self.port}",
            "-e",
            "KUA_CONFIG=/app/kuadeploy.toml",
            "-v",
            f"{self.volume}:/app/data",
            "-v",
            f"{sock}:/var/run/docker.sock",
            "-v",
            f"{config}:/app/kuadeploy.toml:ro",
            "-v",
            f"{source.bare}:{REPO_IN_CONTAINER}:ro",
            self.image_ref,
        )
        self.health = wait_healthz(engine, self.name, self.port)

    def image_id(self) -> str:
        return docker(
            self.engine, "image", "inspect", "-f", "{{.Id}}", self.image_ref
        ).stdout.strip()

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        return http(method, self.url + path, TOKEN, body)

    def inspect(self) -> dict:
        return json.loads(docker(self.engine, "inspect", self.name).stdout)[0]

    def register_from_manifest(self, source: Source) -> dict:
        """`kuadeploy apps import-manifest` with the repository's kua.json, adapted to
        this engine: the repository as the container sees it, this port, the local
        base image for builds."""
        overrides = {
            "repo": REPO_IN_CONTAINER,
            "build_args": {"BASE_IMAGE": BASE_IMAGE},
            "container": {"name": self.name, "volumes": None},
            "verify": {"health_url": self.health_url, "timeout_s": 60, "stable_s": 1},
        }
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "kuadeploy",
                "apps",
                "import-manifest",
                REPO_IN_CONTAINER,
                "--file",
                str(source.work / "kua.json"),
                "--set",
                json.dumps(overrides),
                "--url",
                self.url,
                "--token",
                TOKEN,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.returncode == 0, proc.stderr
        registered = json.loads(proc.stdout)
        assert registered["app"] == "kuadeploy" and registered["entry"]["mode"] == "self"
        return registered

    def events(self) -> list[dict]:
        status, page = self.call("GET", "/api/v1/events?after=0&limit=1000")
        assert status == 200, page
        return page["events"]

    def wait_deploy(self, deploy_id: str) -> dict:
        """Through the hand-off: the server goes away and another one answers."""
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        view: dict = {}
        while time.monotonic() < deadline:
            try:
                status, view = self.call("GET", f"/api/v1/deploys/{deploy_id}")
            except (OSError, ValueError):
                time.sleep(0.3)
                continue
            if status == 200 and view["status"] not in ("queued", "running"):
                return view
            time.sleep(0.3)
        logs = docker(self.engine, "logs", "--tail", "40", self.name, check=False)
        pytest.fail(f"deploy {deploy_id} still {view.get('status')}:\n{view}\n{logs.stderr}")

    def remove(self) -> None:
        found = docker(
            self.engine, "ps", "-aq", "--filter", f"name=^{self.name}", check=False
        ).stdout.split()
        if found:
            docker(self.engine, "rm", "-f", *found, check=False)
        docker(self.engine, "volume", "rm", "-f", self.volume, check=False)
        docker(self.engine, "rmi", self.image_ref, check=False)


@pytest.fixture
def orchestrator(
    docker_a: str, image_a: str, source: Source, tmp_path: Path
) -> Iterator[Orchestrator]:
    kua = Orchestrator(docker_a, image_a, source, tmp_path)
    try:
        assert kua.health["git_sha"] == source.a
        yield kua
    finally:
        kua.remove()


def _deploy(kua: Orchestrator, sha: str) -> tuple[str, dict, subprocess.CompletedProcess]:
    """`kuadeploy deploy kuadeploy --sha SHA --follow`: the release command, whose live
    view goes on across the hand-off (the server it follows is replaced)."""
    proc = subprocess.run(
        [sys.executable, "-m", "kuadeploy", "deploy", "kuadeploy", "--sha", sha, "--follow"],
        capture_output=True,
        text=True,
        timeout=DEPLOY_TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": str(ROOT), "KUA_URL": kua.url, "KUA_TOKEN": TOKEN},
    )
    queued = next((x for x in proc.stdout.splitlines() if x.endswith(" queued")), None)
    assert queued, f"no deploy queued:\n{proc.stdout}\n{proc.stderr}"
    deploy_id = queued.split()[1]
    return deploy_id, kua.wait_deploy(deploy_id), proc


def _stream(events: list[dict], deploy_id: str) -> list[dict]:
    return [e for e in events if e["stream"] == f"deploy/{deploy_id}"]


def _transients_gone(engine: str, timeout: float = 20) -> None:
    """The engine removes an exited transient container (AutoRemove) shortly after."""
    deadline = time.monotonic() + timeout
    while left := docker(engine, "ps", "-aq", "--filter", HANDOFF).stdout.split():
        assert time.monotonic() < deadline, f"transient containers left: {left}"
        time.sleep(0.3)


def _audit_ok(kua: Orchestrator) -> None:
    status, audit = kua.call("GET", "/api/v1/audit/verify?full=1")
    assert status == 200 and audit["ok"] is True, audit


def test_self_deploy_a_to_b_success_recorded_by_the_new_instance(
    orchestrator: Orchestrator, source: Source
) -> None:
    kua = orchestrator
    kua.register_from_manifest(source)
    before = kua.events()
    old = kua.inspect()

    deploy_id, view, cli = _deploy(kua, source.b)

    assert view["status"] == "succeeded", view
    assert cli.returncode == 0, f"{cli.stdout}\n{cli.stderr}"
    assert f"deploy {deploy_id}: succeeded" in cli.stdout
    health = wait_healthz(kua.engine, kua.name, kua.port)
    assert health["git_sha"] == source.b
    new = kua.inspect()
    assert new["Id"] != old["Id"] and new["Name"] == old["Name"]
    assert new["Image"] == view["image_id"] == view["handoff"]["image_id"]
    # The same configuration, from the old container (not from the registry).
    assert new["HostConfig"]["Binds"] == old["HostConfig"]["Binds"]
    for key in ("GroupAdd", "NetworkMode", "RestartPolicy"):
        assert new["HostConfig"][key] == old["HostConfig"][key], key
    assert f"KUA_LISTEN=127.0.0.1:{kua.port}" in new["Config"]["Env"]
    assert f"KUA_GIT_SHA={source.b}" in new["Config"]["Env"]  # from image B, baked
    assert new["Config"]["Labels"]["test.kua"] == "self-deploy"
    assert new["Config"]["Labels"]["kua.sha"] == source.b

    after = kua.events()
    # The history from before the hand-off is intact, and the chain verifies.
    assert [(e["seq"], e["hash"]) for e in after[: len(before)]] == [
        (e["seq"], e["hash"]) for e in before
    ]
    _audit_ok(kua)
    stream = _stream(after, deploy_id)
    types = [e["type"] for e in stream]
    assert types.count("DeploySucceeded") == 1 and types[-1] == "DeploySucceeded", types
    # A, stopped by the hand-off, recorded neither an interruption nor a cancel.
    assert not {"DeployInterrupted", "DeployCancelled", "DeployFailed"} & set(types), types
    handoff = next(e for e in stream if e["type"] == "SelfHandoffStarted")
    assert handoff["data"]["previous_sha"] == source.a and handoff["data"]["sha"] == source.b
    # Appended by the B instance: with the verify step that B recorded about itself,
    # in B's container, after A had handed off.
    verified, succeeded = stream[-2], stream[-1]
    assert verified["type"] == "StepSucceeded" and verified["data"]["step"] == "verify"
    instance = verified["data"]["detail"]["instance"]
    assert verified["data"]["detail"]["recorded_by"] == "new instance"
    assert instance["git_sha"] == source.b and instance["container_id"] == new["Id"]
    assert instance["image_id"] == new["Image"]
    assert succeeded["seq"] == verified["seq"] + 1 and succeeded["seq"] > handoff["seq"]
    assert succeeded["data"]["container_id"] == new["Id"]

    _transients_gone(kua.engine)
    leftovers = docker(kua.engine, "ps", "-aq", "--filter", f"name=^{kua.name}-").stdout.split()
    assert not leftovers, "the old container was not removed"
    assert kua.image_id() == new["Image"]  # the name it was started by is B now
    status, runtime = kua.call("GET", "/api/v1/apps/kuadeploy/runtime-status")
    assert status == 200 and runtime["release"]["sha"] == source.b, runtime
    assert runtime["drift"] is False, runtime


def test_self_deploy_to_a_server_that_cannot_start_restores_a(
    orchestrator: Orchestrator, source: Source
) -> None:
    kua = orchestrator
    kua.register_from_manifest(source)
    old = kua.inspect()

    deploy_id, view, cli = _deploy(kua, source.broken)

    assert view["status"] == "rolled_back", view
    assert cli.returncode == 1, f"{cli.stdout}\n{cli.stderr}"
    assert f"deploy {deploy_id}: rolled_back" in cli.stdout
    assert view["rolled_back_to"] == source.a
    health = wait_healthz(kua.engine, kua.name, kua.port)
    assert health["git_sha"] == source.a
    now = kua.inspect()
    assert now["Id"] == old["Id"] and now["Image"] == old["Image"]  # A's own container
    assert now["State"]["Running"]

    stream = _stream(kua.events(), deploy_id)
    types = [e["type"] for e in stream]
    assert "DeploySucceeded" not in types, types
    assert "SelfHandoffStarted" in types
    assert types[-3:] == ["DeployFailed", "RollbackStarted", "RolledBack"], types
    failed, rolled = stream[-3], stream[-1]
    assert failed["data"]["step"] == "recreate"
    # Why, as the transient container saw it: B' exited (and was restarted).
    why = stream[-4]["data"]["detail"]["transient"]["why"]
    assert "exit" in why or "restart" in why, why
    assert why in failed["data"]["reason"]
    assert rolled["data"]["sha"] == source.a and rolled["data"]["verified"] is True
    assert stream[-4]["data"]["detail"]["instance"]["git_sha"] == source.a
    _audit_ok(kua)

    _transients_gone(kua.engine)
    leftovers = docker(kua.engine, "ps", "-aq", "--filter", f"name=^{kua.name}-").stdout.split()
    assert not leftovers, "a container of B' was left"
    assert kua.image_id() == kua.image_a
    status, runtime = kua.call("GET", "/api/v1/apps/kuadeploy/runtime-status")
    assert status == 200 and runtime["release"]["sha"] == source.a, runtime
