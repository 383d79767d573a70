"""Helpers for deploy tests on the real engines: a service with servers a and b."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from kuadeploy.config import DeployConfig, ServerConfig
from tests.api_support import Api, make_config, running

TERMINAL = {"succeeded", "failed", "rolled_back", "cancelled", "superseded", "interrupted"}


@contextlib.asynccontextmanager
async def deploy_service(
    data_dir: Path, docker_a: str, docker_b: str | None = None, **overrides: Any
) -> AsyncIterator[Api]:
    servers = {"a": ServerConfig(docker=docker_a)}
    if docker_b:
        servers["b"] = ServerConfig(docker=docker_b)
    deploy = overrides.pop("deploy", DeployConfig(health_poll_s=0.1))
    async with running(make_config(data_dir, servers=servers, deploy=deploy, **overrides)) as api:
        yield api


async def register(api: Api, app, server: str = "a", **overrides: Any) -> None:
    status, body, _ = await api.call(
        "PUT", f"/api/v1/apps/{app.name}", json=app.entry(server, **overrides)
    )
    assert status in (200, 201), body


async def deploy(api: Api, app_name: str, **body: Any) -> str:
    status, answer, _ = await api.call(
        "POST", f"/api/v1/apps/{app_name}/deploy", role="deployer", json=body or {}
    )
    assert status == 202, answer
    return answer["deploy_id"]


async def wait_status(
    api: Api, deploy_id: str, statuses=TERMINAL, timeout: float = 60, poll_s: float = 0.1
) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, view, _ = await api.call("GET", f"/api/v1/deploys/{deploy_id}", role="reader")
        assert status == 200, view
        if view["status"] in statuses:
            return view
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"deploy {deploy_id} still {view['status']}: {view['steps']}")
        await asyncio.sleep(poll_s)


def docker_json(url: str, *args: str) -> Any:
    out = subprocess.run(
        ["docker", "--host", url, *args], check=True, capture_output=True, text=True
    ).stdout
    return msgspec.json.decode(out)


def container_labels(url: str, name: str) -> dict[str, str]:
    return docker_json(url, "inspect", "--format", "{{json .Config.Labels}}", name)


def health_body(app) -> str:
    import urllib.request

    with urllib.request.urlopen(app.health_url, timeout=5) as resp:
        return resp.read().decode()


def step_names(view: dict) -> list[tuple[str, str]]:
    return [(s["name"], s["status"]) for s in view["steps"]]


@contextlib.contextmanager
def when_recorded(
    api: Api, kind: type, act: Callable[[str], Awaitable[Any]], deploy_id: str | None = None
) -> Iterator[list[asyncio.Future]]:
    """Start act(deploy id) the moment an event of `kind` commits, for `deploy_id` or any
    deploy: the narrowest windows (a cancel as a run is picked up, or once it succeeded)."""
    started: list[asyncio.Future] = []

    def on_commit(batch) -> None:
        for stored in batch:
            deploy = stored.event.stream.removeprefix("deploy/")
            if isinstance(stored.event.data, kind) and deploy_id in (None, deploy):
                started.append(asyncio.ensure_future(act(deploy)))

    unsubscribe = api.service.ledger.subscribe(on_commit)
    try:
        yield started
    finally:
        unsubscribe()
