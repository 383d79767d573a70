"""Verify that the running container is the release we meant, and stays up.

A label alone can lie, so the container's image ID must be exactly the image
recorded for the release; then the health URL must answer 2xx (with the SHA in
the body when asked) and the container must stay running without a restart
for `stable_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

from kuadeploy.adapters.docker import ContainerState, Engine
from kuadeploy.adapters.docker_specs import LABEL_REVISION, LABEL_SHA
from kuadeploy.entry import Verify


class VerifyFailed(Exception):
    pass


def check_identity(state: ContainerState | None, sha: str, image_id: str) -> None:
    """Pure: the container is the release (sha, image_id), and it is running."""
    if state is None:
        raise VerifyFailed("the container is gone")
    if state.image_id != image_id:
        raise VerifyFailed(f"container runs image {state.image_id[:19]}, expected {image_id[:19]}")
    for label in (LABEL_SHA, LABEL_REVISION):
        if state.labels.get(label) != sha:
            raise VerifyFailed(f"label {label}={state.labels.get(label)!r}, expected {sha}")
    if not state.running:
        detail = f" ({state.error})" if state.error else ""
        raise VerifyFailed(f"container is {state.status}, exit code {state.exit_code}{detail}")
    if state.restart_count:
        raise VerifyFailed(f"container restarted {state.restart_count} time(s)")


def runs_release(state: ContainerState, sha: str, image_id: str) -> bool:
    """Pure: the running container is that release (no drift). A quick look, unlike
    check_identity's verdict on a new container."""
    return state.running and state.image_id == image_id and state.labels.get(LABEL_SHA) == sha


async def verify_release(
    engine: Engine,
    name: str,
    sha: str,
    image_id: str,
    settings: Verify,
    poll_s: float = 0.25,
    mask: Callable[[str], str] = str,
) -> dict:
    """Raise VerifyFailed unless the release is up, healthy and stable; detail on success.
    `mask` cleans the health answer (it may echo the container's secret env) before it
    is cut short or quoted into the error, where a value would no longer be found."""
    first = await engine.inspect_container(name)
    check_identity(first, sha, image_id)
    assert first is not None
    health = None
    if settings.health_url:
        health = await _wait_healthy(engine, name, sha, image_id, settings, poll_s, mask)
    stable_until = time.monotonic() + settings.stable_s
    while True:
        state = await engine.inspect_container(name)
        check_identity(state, sha, image_id)
        assert state is not None
        if state.started_at != first.started_at:
            raise VerifyFailed("container was restarted during verification")
        remaining = stable_until - time.monotonic()
        if remaining <= 0:
            break
        await asyncio.sleep(min(poll_s, remaining))
    return {"container_id": first.id, "health": health, "stable_s": settings.stable_s}


async def _wait_healthy(
    engine: Engine,
    name: str,
    sha: str,
    image_id: str,
    settings: Verify,
    poll_s: float,
    mask: Callable[[str], str],
) -> dict:
    url = settings.health_url
    assert url is not None
    deadline = time.monotonic() + settings.timeout_s
    last = "no answer yet"
    timeout = aiohttp.ClientTimeout(total=max(1.0, min(5.0, settings.timeout_s)))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            try:
                async with session.get(url, allow_redirects=False) as resp:
                    body = await resp.text(errors="replace")
                    if 200 <= resp.status < 300:
                        if not settings.expect_sha_in_body or sha in body:
                            return {"url": url, "status": resp.status}
                        shown = mask(body)[:120]
                        last = f"{url} answered {resp.status} without {sha[:12]}: {shown!r}"
                    else:
                        last = f"{url} answered {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = f"{url}: {exc!r}"
            check_identity(await engine.inspect_container(name), sha, image_id)
            if time.monotonic() >= deadline:
                raise VerifyFailed(f"not healthy within {settings.timeout_s}s: {last}")
            await asyncio.sleep(poll_s)
