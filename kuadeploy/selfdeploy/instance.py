"""Who is this process: its baked GIT_SHA and the container it runs in.

The container ID comes from /proc/self/mountinfo (the engine bind-mounts
/etc/hostname and friends from `…/containers/<id>/`), and counts only when the
engine confirms a container of that ID: a host process never finds one.
"""

from __future__ import annotations

import asyncio
import logging
import re

from kuadeploy import GIT_SHA
from kuadeploy.adapters.docker import Engine, EngineError
from kuadeploy.selfdeploy.decide import Instance

log = logging.getLogger(__name__)
MOUNTINFO = "/proc/self/mountinfo"
_CONTAINER_DIR = re.compile(r"/containers/([0-9a-f]{64})/")


def container_id_in(mountinfo: str) -> str | None:
    found = _CONTAINER_DIR.search(mountinfo)
    return found.group(1) if found else None


def own_container_id() -> str | None:
    try:
        with open(MOUNTINFO) as f:
            return container_id_in(f.read())
    except OSError:
        return None


async def whoami(engine: Engine | None, timeout_s: float = 10.0) -> Instance:
    """This instance; without its container when the engine cannot confirm it."""
    cid = own_container_id()
    if engine is None or cid is None:
        return Instance(GIT_SHA)
    try:
        async with asyncio.timeout(timeout_s):
            state = await engine.inspect_container(cid)
    except (EngineError, TimeoutError) as exc:
        log.warning("cannot inspect our own container %s: %s", cid[:12], exc)
        return Instance(GIT_SHA)
    if state is None:
        return Instance(GIT_SHA)
    return Instance(GIT_SHA, state.id, state.name, state.image_id)
