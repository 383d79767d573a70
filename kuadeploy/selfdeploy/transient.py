"""`kuadeploy self-handoff --deploy ID`: the transient container's work.

It runs from the NEW image with the orchestrator's mounts, env and groups, so it
reads the same config and (read-only) the same ledger, where the hand-off record
says everything it needs. It never writes the ledger: the instance that runs
afterwards records the outcome.

1. inspect the orchestrator container; stop it (gracefully) and rename it aside;
2. create a container of the same name and configuration on the new image;
3. verify it (running, the recorded image, `/healthz` reporting the target SHA,
   stable) — the new instance records its success before it serves, so a
   verified new instance has recorded it;
4. on success point the old container's image name (`kuadeploy:latest`) at the new
   image and remove the old container (never its volumes); otherwise stop the
   new one and, unless the ledger shows that it recorded its success after all,
   remove it and start the old container again as it was.

The engine removes the transient container when it exits (AutoRemove).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import closing

import aiohttp

from kuadeploy import events as ev
from kuadeploy.adapters.docker import Engine, EngineError
from kuadeploy.adapters.docker_specs import release_labels
from kuadeploy.config import Config
from kuadeploy.entry import Verify
from kuadeploy.ledger import reading
from kuadeploy.pipeline.engines import EnginePool
from kuadeploy.pipeline.verify import VerifyFailed, verify_release
from kuadeploy.selfdeploy.decide import handoff_of
from kuadeploy.selfdeploy.report import write_report
from kuadeploy.selfdeploy.spec import image_reference, recreate_body
from projections.deploys import ACTIVE, DeployView, fold_deploy

log = logging.getLogger("kuadeploy.self-handoff")
POLL_S = 0.25
NEW_STOP_TIMEOUT_S = 10


def read_deploy(ledger_path: str, deploy_id: str) -> DeployView | None:
    view = None
    with closing(reading.open_readonly(ledger_path)) as conn:
        for body in reading.iter_stream_bodies(conn, f"deploy/{deploy_id}"):
            view = fold_deploy(view, ev.decode(body))
    return view


async def run_handoff(config: Config, deploy_id: str) -> int:
    """0: the new release took over; 1: the previous one is back (or never left)."""
    view = read_deploy(config.ledger_path, deploy_id)
    if view is None or view.handoff is None:
        log.error({"msg": "no hand-off recorded", "deploy": deploy_id})
        return 2
    if view.status not in ACTIVE:
        log.info({"msg": "the hand-off already ended", "deploy": deploy_id, "as": view.status})
        return 0
    h = handoff_of(view.handoff)
    engines = EnginePool(config.servers)
    try:
        return await Handoff(engines.get(h.server), config, h, deploy_id).run()
    finally:
        await engines.close()


class Handoff:
    def __init__(self, engine: Engine, config: Config, h: ev.SelfHandoffStarted, deploy_id: str):
        self.engine = engine
        self.config = config
        self.h = h
        self.deploy_id = deploy_id
        self.aside = f"{h.container}-previous-{deploy_id}"
        self.old: dict | None = None  # the old container's inspect, once read

    def say(self, msg: str, **extra: object) -> None:
        log.info({"msg": msg, "deploy": self.deploy_id, **extra})

    async def run(self) -> int:
        h = self.h
        old = self.old = await self.engine.inspect_container_raw(h.container_id)
        if old is None:
            self.say("the orchestrator container is gone; nothing to do")
            return 1
        old_image = await self.engine.inspect_image(old["Image"]) or {}
        labels = release_labels(h.app, h.sha, self.deploy_id)
        body = recreate_body(old, old_image, new_image=h.image_id, labels=labels)

        self.say("stopping the old instance", container=h.container, sha=h.previous_sha)
        try:
            await self.engine.stop_container(h.container_id, timeout_s=h.stop_timeout_s)
            await self.engine.rename_container(h.container_id, self.aside)
        except EngineError as exc:
            return await self.restore(f"could not set the old container aside: {exc}")
        try:
            await self.engine.create_and_start(h.container, body)
            self.say("new instance started; verifying", sha=h.sha)
            await verify_release(
                self.engine,
                h.container,
                h.sha,
                h.image_id,
                Verify(h.health_url, True, h.timeout_s, h.stable_s),
                POLL_S,
            )
        except (EngineError, VerifyFailed) as exc:
            return await self.restore(str(exc))
        self.say("the new release took over", sha=h.sha)
        await self._retag(old)
        await self._remove_aside()
        return 0

    async def restore(self, why: str) -> int:
        h = self.h
        self.say("the new release did not take over", why=why)
        with contextlib.suppress(EngineError):
            await self.engine.stop_container(h.container, timeout_s=NEW_STOP_TIMEOUT_S)
        # Stopped, it can write nothing more: the ledger is final about its claim.
        if self._succeeded():
            self.say("yet the new instance recorded its success: it stays the release")
            with contextlib.suppress(EngineError):
                await self.engine.start_existing(h.container)
            if self.old is not None:  # it is the release: compose must keep it too
                await self._retag(self.old)
            await self._remove_aside()
            return 0
        new = await self.engine.inspect_container_raw(h.container)
        if new is not None and new["Id"] != h.container_id:
            await self.engine.remove_container(new["Id"], force=True, volumes=False)
        if (await self.engine.inspect_container_raw(self.aside)) is not None:
            await self.engine.rename_container(h.container_id, h.container)
        self._report(why)  # before the old instance starts: it reads the report
        await self.engine.start_existing(h.container_id)
        self.say("the previous release is back", sha=h.previous_sha)
        await self._await_previous()
        return 1

    async def _retag(self, old: dict) -> None:
        """The image name the old container was created from now names the new
        release, so `docker-compose up` (which compares image IDs) keeps it."""
        ref = image_reference(old)
        if ref is None:
            return
        try:
            await self.engine.tag_image(self.h.image_id, *ref)
        except EngineError as exc:
            self.say("could not tag the new image", ref=":".join(ref), error=str(exc))

    def _report(self, why: str) -> None:
        """Why the new release did not take over, for the restored instance to record
        (the engine removes this container, and its log, when it exits)."""
        doc = {"deploy": self.deploy_id, "transient": self.h.transient, "why": why}
        try:
            write_report(self.config, self.deploy_id, doc)
        except OSError as exc:
            self.say("cannot write the hand-off report", error=str(exc))

    def _succeeded(self) -> bool:
        try:
            view = read_deploy(self.config.ledger_path, self.deploy_id)
        except Exception as exc:  # unreadable: never assume a success
            self.say("cannot read the ledger", error=repr(exc))
            return False
        return view is not None and view.status == "succeeded"

    async def _remove_aside(self) -> None:
        try:
            await self.engine.remove_container(self.aside, force=True, volumes=False)
        except EngineError as exc:
            self.say("could not remove the old container", error=str(exc))

    async def _await_previous(self) -> None:
        """Only for the log: the restored instance records the outcome itself."""
        deadline = time.monotonic() + self.h.timeout_s
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(self.h.health_url) as resp:
                        if resp.status == 200 and self.h.previous_sha in await resp.text():
                            self.say("the previous release serves again")
                            return
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass
                await asyncio.sleep(POLL_S)
        self.say("the previous release does not answer", url=self.h.health_url)
