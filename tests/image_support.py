"""Helpers for tests that run the kuadeploy image in a private engine (DESIGN §8):
the docker CLI, a free loopback port, plain HTTP, waiting for /healthz."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_IMAGE = ROOT / "scripts" / "build-image"
BASE_IMAGE = "kuadeploy-base:bookworm"


def docker(
    engine: str, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DOCKER_HOST": engine},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(
    method: str,
    url: str,
    token: str | None = None,
    body: object = None,
    timeout: float = 10,
    **headers: str,
) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for name, value in headers.items():
        req.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_healthz(engine: str, container: str, port: int, timeout: float = 60) -> dict:
    """/healthz of a container serving on 127.0.0.1:port; fails with its logs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = http("GET", f"http://127.0.0.1:{port}/healthz", timeout=3)
            if status == 200:
                return body
        except (OSError, ValueError):
            pass
        state = docker(engine, "inspect", "-f", "{{.State.Status}}", container).stdout.strip()
        if state != "running" or time.monotonic() > deadline:
            logs = docker(engine, "logs", container, check=False)
            pytest.fail(f"{container} not serving /healthz ({state}):\n{logs.stdout}{logs.stderr}")
        time.sleep(0.3)


def build_image(engine: str, repo: Path, sha: str, tag: str, timeout: float = 280) -> str:
    """scripts/build-image of the checkout `repo` (base, wheelhouse, image); its log."""
    started = time.monotonic()
    proc = subprocess.run(
        [str(repo / "scripts/build-image"), "--docker-host", engine, "--sha", sha, "--tag", tag],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"build-image failed:\n{proc.stdout[-4000:]}\n{proc.stderr}"
    return f"build-image: {time.monotonic() - started:.0f} s\n{proc.stderr}"


def prepare_base(engine: str, timeout: float = 280) -> None:
    """The local base image in `engine` and this checkout's wheelhouse, no image."""
    proc = subprocess.run(
        [str(BUILD_IMAGE), "--docker-host", engine, "--prepare-only"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"build-image --prepare-only failed:\n{proc.stderr}"
