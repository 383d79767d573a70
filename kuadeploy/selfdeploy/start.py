"""The running (old) instance's side of a self-deploy: check, then hand over.

Everything is checked before anything is touched, so a refusal ends the deploy
with the old instance still serving. Once the transient container runs, this
instance only waits to be stopped by it; it never records the outcome itself
unless the transient container ends without having stopped it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from kuadeploy import GIT_SHA
from kuadeploy import events as ev
from kuadeploy.adapters.docker import Engine, EngineError
from kuadeploy.adapters.docker_specs import ENV_SHA, release_labels
from kuadeploy.entry import AppEntry
from kuadeploy.selfdeploy.instance import own_container_id
from kuadeploy.selfdeploy.spec import transient_body

# How long the old instance gets to stop gracefully (finish requests, record
# interrupted deploys of other apps) before the engine kills it.
STOP_TIMEOUT_S = 30
# Beyond its own timeouts, how long a transient container may take before the old
# instance gives up on it: it is stuck before it ever touched anything.
TRANSIENT_GRACE_S = 300.0


class HandoffRefused(Exception):
    """A self-deploy that cannot hand over; nothing was touched."""


def image_sha(image: dict) -> str | None:
    env = (image.get("Config") or {}).get("Env") or []
    return next((e.split("=", 1)[1] for e in env if e.startswith(ENV_SHA + "=")), None)


async def plan_handoff(
    engine: Engine, entry: AppEntry, app: str, deploy_id: str, sha: str, image_id: str
) -> tuple[ev.SelfHandoffStarted, dict]:
    """The hand-off to record and the transient container's create body."""
    if not entry.verify.health_url:
        raise HandoffRefused("a self deploy needs verify.health_url (kuadeploy's /healthz)")
    cid = own_container_id()
    container = await engine.inspect_container_raw(cid) if cid else None
    if container is None:
        raise HandoffRefused(
            f"kuadeploy does not run in a container on server {entry.server}'s engine; "
            "a self deploy replaces the container it runs in"
        )
    if (container.get("HostConfig") or {}).get("AutoRemove"):
        raise HandoffRefused(
            "kuadeploy's container was started with --rm: stopping it would remove it, "
            "and with it the way back; run it without --rm (as docker-compose.yml does)"
        )
    new_image = await engine.inspect_image(image_id)
    if new_image is None:
        raise HandoffRefused(f"the new image {image_id[:19]} is gone")
    baked = image_sha(new_image)
    if baked != sha:
        raise HandoffRefused(
            f"the new image bakes {ENV_SHA}={baked!r}, not {sha}: its /healthz could never "
            "report the target (the Dockerfile needs ARG GIT_SHA and ENV KUA_GIT_SHA)"
        )
    old_image = await engine.inspect_image(container["Image"]) or {}
    name = container["Name"].lstrip("/")
    handoff = ev.SelfHandoffStarted(
        app=app,
        server=entry.server,
        container=name,
        container_id=container["Id"],
        sha=sha,
        image_id=image_id,
        previous_sha=GIT_SHA,
        previous_image_id=container["Image"],
        transient=f"{name}-handoff-{deploy_id}",
        health_url=entry.verify.health_url,
        timeout_s=entry.verify.timeout_s,
        stable_s=entry.verify.stable_s,
        stop_timeout_s=STOP_TIMEOUT_S,
    )
    body = transient_body(
        container,
        old_image,
        new_image=image_id,
        labels=release_labels(app, sha, deploy_id),
        command=["self-handoff", "--deploy", deploy_id],
    )
    return handoff, body


async def wait_for_takeover(engine: Engine, h: ev.SelfHandoffStarted, poll_s: float = 1.0) -> str:
    """Wait while the transient container works. Normally it stops this instance
    first (the wait is cancelled by the shutdown); returns why the hand-off failed
    when the transient container is gone and this instance still runs."""
    limit = h.stop_timeout_s + h.timeout_s + h.stable_s + TRANSIENT_GRACE_S
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        await asyncio.sleep(poll_s)
        try:
            state = await engine.inspect_container(h.transient)
        except EngineError:
            continue  # the engine is busy or restarting: the transient may still work
        if state is None:
            return f"{h.transient} ended without replacing kuadeploy's container"
    with contextlib.suppress(EngineError):
        await engine.remove_container(h.transient, force=True)
    return f"{h.transient} did not replace kuadeploy's container within {limit:g}s"
