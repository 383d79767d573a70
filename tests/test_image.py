"""The container packaging: image, compose file, release manifest (issue 6).

The image is built by scripts/build-image in the private engine `docker_a` (the session's,
tests/fixtures/engines.py) on the local debootstrap base, with a wheelhouse: no Docker Hub,
no network inside the build. Containers use network_mode host and 127.0.0.1 only
(DESIGN §8).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from kuadeploy.entry import entry_from_builtins
from kuadeploy.manifest import manifest_to_entry
from tests.image_support import ROOT, build_image, docker, free_port, http, wait_healthz

APP_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(docker_a: str) -> str:
    return docker_a


@pytest.fixture(scope="module")
def image_sha() -> str:
    return secrets.token_hex(20)  # a fresh SHA each run: nothing stale can pass


@pytest.fixture(scope="module")
def image(engine: str, image_sha: str) -> Iterator[str]:
    tag = f"kuadeploy-test:{image_sha[:12]}"
    print(build_image(engine, ROOT, image_sha, tag))
    yield tag
    docker(engine, "rmi", "-f", tag, check=False)


@pytest.fixture
def cleanup(engine: str) -> Iterator[list[tuple[str, str]]]:
    """Register ("container"|"volume", name) to remove after the test."""
    things: list[tuple[str, str]] = []
    yield things
    for kind, name in reversed(things):
        if kind == "container":
            docker(engine, "rm", "-f", "-v", name, check=False)
        else:
            docker(engine, "volume", "rm", "-f", name, check=False)


# --- the manifest and the compose file (no engine needed) ------------------------------------


def test_image_kua_json_prefills_a_valid_self_entry() -> None:
    manifest = json.loads((ROOT / "kua.json").read_text())
    assert manifest["name"] == "kuadeploy"
    assert manifest["mode"] == "self"
    assert manifest["server"] == "local"
    assert manifest["health_url"] == "http://127.0.0.1:8080/healthz"
    assert re.fullmatch(APP_NAME, manifest["name"])
    name, doc = manifest_to_entry(
        manifest, {"repo": "https://forge.example.org/infra/kuadeploy.git"}
    )
    assert name == "kuadeploy"
    entry = entry_from_builtins(doc)
    assert entry.mode == "self"
    assert entry.verify.health_url == "http://127.0.0.1:8080/healthz"
    assert entry.verify.expect_sha_in_body
    assert entry.container.name == "kuadeploy"
    assert "kuadeploy-data:/app/data" in entry.container.volumes
    # Unknown keys are as wrong in a manifest as in an entry.
    with pytest.raises(msgspec.ValidationError):
        entry_from_builtins(manifest_to_entry({**manifest, "colour": "red"}, {"repo": "x"})[1])


def _docker_compose() -> str:
    """Debian's docker-compose (v1); installed with apt when missing and we are root."""
    exe = shutil.which("docker-compose")
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "docker-compose"],
            env=env,
            capture_output=True,
            timeout=240,
        )
        exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is missing: apt-get install docker-compose")
    return exe


def test_image_compose_file_is_valid(tmp_path: Path) -> None:
    compose = _docker_compose()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}

    def config(path: Path, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [compose, "-f", str(path), "config"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, **extra},
            cwd=path.parent,
        )

    ok = config(ROOT / "docker-compose.yml", DOCKER_GID="4242")
    assert ok.returncode == 0, ok.stderr
    out = ok.stdout
    for needle in (
        "container_name: kuadeploy",
        "restart: unless-stopped",
        "network_mode: host",
        "- '4242'",  # group_add: the socket's group
        "KUA_CONFIG: /app/kuadeploy.toml",
        "kuadeploy-data:/app/data:rw",
        "/var/run/docker.sock:/var/run/docker.sock:rw",
        "/kuadeploy.toml:/app/kuadeploy.toml:ro",
        "name: kuadeploy-data",
    ):
        assert needle in out, f"{needle!r} missing from:\n{out}"
    assert "registry" not in out  # the ledger is engine-owned: no registry bind-mount

    # The socket's group is required, with a message that says what to do.
    missing = config(ROOT / "docker-compose.yml")
    assert missing.returncode != 0
    assert "DOCKER_GID" in missing.stderr

    # And the check is strict: an unknown key is an error, not ignored.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        (ROOT / "docker-compose.yml")
        .read_text()
        .replace("    restart: unless-stopped", "    restart: unless-stopped\n    restrat: always")
    )
    bad = config(broken, DOCKER_GID="4242")
    assert bad.returncode != 0 and "restrat" in bad.stderr, bad.stderr


# --- the image -------------------------------------------------------------------------------


@pytest.mark.docker
def test_image_builds_on_local_base_with_sha(engine: str, image: str, image_sha: str) -> None:
    info = json.loads(docker(engine, "image", "inspect", image).stdout)[0]
    base = json.loads(docker(engine, "image", "inspect", "kuadeploy-base:bookworm").stdout)[0]
    base_layers = base["RootFS"]["Layers"]
    assert info["RootFS"]["Layers"][: len(base_layers)] == base_layers, "not on the local base"

    cfg = info["Config"]
    assert cfg["Labels"]["org.opencontainers.image.revision"] == image_sha
    env = dict(item.split("=", 1) for item in cfg["Env"])
    assert env["KUA_GIT_SHA"] == image_sha
    assert env["KUA_DATA_DIR"] == "/app/data"
    assert env["KUA_LISTEN"] == "0.0.0.0:8080"
    assert cfg["User"] == "kua"
    assert "/app/data" in cfg["Volumes"]
    assert cfg["Entrypoint"] == ["kuadeploy"]
    assert cfg["Cmd"] == ["serve"]
    assert "/healthz" in " ".join(cfg["Healthcheck"]["Test"])


@pytest.mark.docker
def test_image_runs_as_non_root_with_its_deps(engine: str, image: str, image_sha: str) -> None:
    port = free_port()
    code = (
        "import os, sys, kuadeploy, aiohttp, aiodocker, aiosqlite, msgspec, pygit2, "
        "cryptography, prometheus_client\n"
        "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n"
        "Ed25519PrivateKey.generate().sign(b'x')\n"
        "open('/app/data/probe', 'w').write('ok')\n"
        "print(kuadeploy.GIT_SHA, os.getuid(), os.environ['KUA_LISTEN'], pygit2.LIBGIT2_VERSION)"
    )
    out = docker(
        engine,
        "run",
        "--rm",
        "--network",
        "host",
        "-e",
        f"KUA_LISTEN=127.0.0.1:{port}",
        "--entrypoint",
        "python",
        image,
        "-c",
        code,
    ).stdout.split()
    assert out[0] == image_sha
    assert out[1] != "0"
    assert out[2] == f"127.0.0.1:{port}"


@pytest.mark.docker
def test_image_cli_help(engine: str, image: str) -> None:
    proc = docker(engine, "run", "--rm", "--network", "none", image, "--help")
    assert "usage: kuadeploy" in proc.stdout


@pytest.mark.docker
def test_image_reaches_docker_socket_with_its_group(engine: str, image: str) -> None:
    """Non-root: the socket's group is added (`--group-add`, compose `group_add`)."""
    sock = engine.removeprefix("unix://")
    gid = str(os.stat(sock).st_gid)
    code = (
        "import asyncio, aiodocker\n"
        "async def main():\n"
        "    async with aiodocker.Docker(url='unix:///var/run/docker.sock') as d:\n"
        "        print((await d.version())['ApiVersion'])\n"
        "asyncio.run(main())"
    )
    args = [
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{sock}:/var/run/docker.sock",
        "--entrypoint",
        "python",
    ]
    if gid != "0":  # a root-group socket would be reachable through any image's root group
        denied = docker(engine, *args, image, "-c", code, check=False)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied.stderr
    ok = docker(engine, *args[:-2], "--group-add", gid, *args[-2:], image, "-c", code)
    assert ok.stdout.strip()


# --- the service in its container ----------------------------------------------------------


@pytest.mark.docker
def test_image_serves_healthz_sha_and_keeps_ledger_across_recreate(
    engine: str, image: str, image_sha: str, tmp_path: Path, cleanup: list
) -> None:
    token = secrets.token_urlsafe(24)
    config = tmp_path / "kuadeploy.toml"
    config.write_text(
        '[servers.local]\ndocker = "unix:///var/run/docker.sock"\n\n'
        f'[[tokens]]\nactor = "ci"\nrole = "admin"\n'
        f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
    )
    config.chmod(0o644)
    suffix = secrets.token_hex(4)
    volume, name, port = f"kua-test-data-{suffix}", f"kua-test-{suffix}", free_port()
    cleanup += [("volume", volume), ("container", name)]
    base = f"http://127.0.0.1:{port}"

    def start() -> dict:
        docker(
            engine,
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "-e",
            f"KUA_LISTEN=127.0.0.1:{port}",
            "-e",
            "KUA_CONFIG=/app/kuadeploy.toml",
            "-v",
            f"{volume}:/app/data",
            "-v",
            f"{config}:/app/kuadeploy.toml:ro",
            "--health-interval",
            "1s",
            "--health-start-period",
            "0s",
            image,
        )
        health = wait_healthz(engine, name, port)
        assert health["status"] == "ok"
        assert health["git_sha"] == image_sha
        return health

    start()
    # The image's HEALTHCHECK probes the port KUA_LISTEN names.
    deadline = time.monotonic() + 30
    while (
        h := docker(engine, "inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()
    ) != "healthy":
        assert time.monotonic() < deadline, f"docker health stays {h}"
        time.sleep(0.5)

    entry = {
        "server": "local",
        "repo": "https://forge.example.org/infra/probe.git",
        "branch": "main",
    }
    status, body = http("PUT", f"{base}/api/v1/apps/probe", token, entry, If_None_Match="*")
    assert 200 <= status < 300, body
    status, before = http("GET", f"{base}/api/v1/events?after=0&limit=1000", token)
    assert status == 200, before
    head = before["events"][-1]["seq"]
    assert head >= 1

    # Recreate: the container stops (SIGTERM to kuadeploy as PID 1) and goes; the volume stays.
    stopping = time.monotonic()
    docker(engine, "stop", "-t", "30", name)
    assert time.monotonic() - stopping < 10, "kuadeploy serve did not exit promptly on SIGTERM"
    docker(engine, "rm", name)
    health = start()
    assert health["head_seq"] >= head

    status, after = http("GET", f"{base}/api/v1/events?after=0&limit=1000", token)
    assert status == 200, after
    assert [(e["seq"], e["hash"]) for e in after["events"][:head]] == [
        (e["seq"], e["hash"]) for e in before["events"]
    ]
    status, app = http("GET", f"{base}/api/v1/apps/probe", token)
    assert status == 200 and app["entry"]["repo"] == entry["repo"], app
    status, audit = http("GET", f"{base}/api/v1/audit/verify", token)
    assert status == 200 and audit["ok"] is True, audit

    # The ledger in the volume verifies offline too, with the server gone.
    docker(engine, "rm", "-f", name)
    verified = docker(
        engine,
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{volume}:/app/data",
        image,
        "audit",
        "verify",
        "--full",
    )
    assert verified.stdout.startswith("ok:"), verified.stdout
