"""scripts/engine: private engines that start, coexist, and stop cleanly even after a crash."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.engines import ENGINE_SCRIPT, engine_dir

PRIVATE_FLAGS = ("--bridge=none", "--iptables=false", "--ip6tables=false")


def docker(url: str, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["docker", "--host", url, *args], capture_output=True, text=True, check=check
    )
    return done.stdout.strip()


def script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENGINE_SCRIPT), *args], capture_output=True, text=True)


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def pids_naming(directory: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if f"{directory}/" in cmdline(int(proc.name)):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def mounts_under(directory: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(f"{directory}/")]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kua-e-", dir="/tmp") as root:
        yield Path(root) / "e"


def test_session_engines_are_two_private_engines(docker_a: str, docker_b: str) -> None:
    ids = set()
    for url in (docker_a, docker_b):
        directory = engine_dir(url)
        pid = int((directory / "docker.pid").read_text())
        assert all(flag in cmdline(pid) for flag in PRIVATE_FLAGS)
        info = docker(url, "info", "--format", "{{.ID}} {{.DockerRootDir}}")
        daemon_id, root = info.split()
        assert root == f"{directory}/data"
        ids.add(daemon_id)
        assert (directory / "dockerd.log").exists()
    assert len(ids) == 2


def test_start_finds_a_running_engine(docker_a: str) -> None:
    directory = engine_dir(docker_a)
    pid = (directory / "docker.pid").read_text()
    done = script("start", str(directory))
    assert done.returncode == 0, done.stderr
    assert "already running" in done.stdout
    assert (directory / "docker.pid").read_text() == pid


def test_stop_after_a_crash_leaves_nothing_and_the_engine_starts_again(short_dir: Path) -> None:
    assert script("start", str(short_dir)).returncode == 0
    url = f"unix://{short_dir}/docker.sock"
    context = short_dir.parent / "ctx"
    context.mkdir()
    shutil.copy2("/bin/busybox", context / "busybox")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\n")
    subprocess.run(
        ["docker", "--host", url, "build", "-q", "-t", "bb", str(context)],
        capture_output=True,
        check=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    docker(url, "run", "-d", "--name", "sleeper", "--network", "none", "bb",
           "/bin/busybox", "sleep", "300")  # fmt: skip
    sleeper = int(docker(url, "inspect", "--format", "{{.State.Pid}}", "sleeper"))
    assert mounts_under(short_dir) and pids_naming(short_dir)

    os.kill(int((short_dir / "docker.pid").read_text()), signal.SIGKILL)
    time.sleep(0.2)
    assert Path(f"/proc/{sleeper}").exists()  # the container outlived its engine

    done = script("stop", str(short_dir))
    assert done.returncode == 0, done.stderr
    assert not Path(f"/proc/{sleeper}").exists()
    assert pids_naming(short_dir) == []  # no dockerd, containerd or shim of it
    assert mounts_under(short_dir) == []
    assert not (short_dir / "docker.sock").exists()
    assert script("stop", str(short_dir)).returncode == 0  # idempotent

    assert script("start", str(short_dir)).returncode == 0
    assert docker(url, "ps", "-a", "--format", "{{.Names}}") == "sleeper"
    assert script("stop", str(short_dir)).returncode == 0
    assert pids_naming(short_dir) == [] and mounts_under(short_dir) == []


def test_a_failed_start_says_why_and_cleans_up(short_dir: Path) -> None:
    (short_dir / "docker.sock").mkdir(parents=True)  # dockerd cannot listen there
    done = script("start", str(short_dir))
    assert done.returncode == 1
    assert "dockerd exited during start-up" in done.stderr
    assert "docker.sock: is a directory" in done.stderr  # the log's tail
    assert mounts_under(short_dir) == [] and pids_naming(short_dir) == []

    too_long = Path("/tmp") / ("x" * 100)
    done = script("start", str(too_long))
    assert done.returncode == 1 and "too long" in done.stderr
    assert not too_long.exists()
