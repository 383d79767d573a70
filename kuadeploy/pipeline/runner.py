"""The deploy queue: one deploy per app at a time, in the ledger, surviving restarts.

Queued deploys are the projection's; a worker per app runs the oldest queued one
and looks again when it ends. At start-up, deploys that were in flight when the
previous process died get `DeployInterrupted` before the queue resumes — except a
self-deploy that handed over, whose outcome this very process is (selfdeploy/decide.py).
A deploy interrupted after its container switch began (by a crash, or by a stop,
which skips the rollback to be quick) may have left the app down or on an
unverified release: start-up then queues a "recovery" deploy of the last verified
release's retained image, run before anything else queued for that app.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

from kuadeploy import events as ev
from kuadeploy.adapters.docker import EngineError, one_off_prefix
from kuadeploy.adapters.docker_specs import LABEL_DEPLOY
from kuadeploy.commands.deploys import new_deploy_id
from kuadeploy.entry import container_name
from kuadeploy.ledger import NewEvent, StoredEvent
from kuadeploy.pipeline.run import ACTOR, Context, DeployRun
from kuadeploy.pipeline.verify import runs_release
from kuadeploy.projector import read_deploy
from kuadeploy.selfdeploy.decide import handoff_of, resolve
from kuadeploy.selfdeploy.instance import whoami
from kuadeploy.selfdeploy.report import read_report, report_path
from projections.deploys import DeployView, active_deploys
from projections.runtime import last_verified

NOTHING_TO_RESTORE = "no verified release to restore: the app is left as it is"

log = logging.getLogger(__name__)


class CancelRefused(Exception):
    """A cancel that cannot act: the deploy is already being stopped or restored."""


class DeployRunner:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._workers: dict[str, asyncio.Task] = {}
        self._runs: dict[str, tuple[DeployRun, asyncio.Task]] = {}
        self._closing = False

    async def start(self) -> None:
        await self._interrupt_leftovers()
        # nothing runs yet: every work dir is an interrupted deploy's leftover
        for leftover in (self.ctx.data_dir / "work").glob("*"):
            shutil.rmtree(leftover, ignore_errors=True)
        await self._recover_interrupted_switches()
        self.ctx.ledger.subscribe(self._on_commit)
        for view in active_deploys(self.ctx.state().deploys):
            self._kick(view.app)

    async def _interrupt_leftovers(self) -> None:
        """Deploys running or held when the last process stopped cannot be resumed
        truthfully: record that they were interrupted; the queue goes on. A
        self-deploy that handed over is not interrupted but decided: this process
        is either its new release (success) or the previous one (failed, rolled back).
        """
        batches = []
        for view in active_deploys(self.ctx.state().deploys):
            if view.status == "queued":
                continue
            if view.handoff is not None:
                outcome = await self._handoff_outcome(view.id, view.handoff)
            else:
                at = next((s.name for s in reversed(view.steps) if s.status == "running"), None)
                reason = f"kuadeploy restarted while {view.status}" + (f" ({at})" if at else "")
                if self._unrestorable(view):
                    reason += f"; {NOTHING_TO_RESTORE}"
                outcome = [ev.DeployInterrupted(view.app, reason)]
            stream = f"deploy/{view.id}"
            first, *rest = outcome
            batch = [NewEvent(stream, first, len(view.events))]
            batches.append((view.id, [*batch, *(NewEvent(stream, d) for d in rest)]))
        for deploy_id, batch in batches:
            await self.ctx.ledger.append(batch, actor=ACTOR)
            report_path(self.ctx.config, deploy_id).unlink(missing_ok=True)  # recorded now
            await self._remove_one_offs(self.ctx.state().deploys.views.get(deploy_id))

    async def _remove_one_offs(self, view: DeployView | None) -> None:
        """A migration's one-off container outlives a killed kuadeploy and goes on
        migrating on its own, where the next deploy would run a second migration
        beside it: remove what the interrupted deploy left."""
        current = self.ctx.state().registry.apps.get(view.app) if view else None
        if view is None or current is None or current.entry is None:
            return
        prefix = one_off_prefix(view.app)
        try:
            engine = self.ctx.engines.get(current.entry.server)
            async with asyncio.timeout(5):  # start-up waits for this
                for leftover in await engine.list_containers({LABEL_DEPLOY: view.id}):
                    if leftover.name.startswith(prefix):
                        await engine.remove_container(leftover.id, force=True)
        except (EngineError, TimeoutError, KeyError) as exc:
            log.warning("deploy %s: cannot remove its one-off containers: %s", view.id, exc)

    def _unrestorable(self, view: DeployView) -> bool:
        """The deploy's switch began, and there is no verified release to go back to."""
        runtime = self.ctx.state().runtime.apps.get(view.app)
        return runtime is not None and runtime.switching == view.id and not last_verified(runtime)

    async def _recover_interrupted_switches(self) -> None:
        """Restore the last verified release where an interrupted switch left the app
        without it: a recorded deploy of its retained image (no rebuild), verified like
        any other. Where there is none, the interruption record says so."""
        state = self.ctx.state()
        for app, runtime in list(state.runtime.apps.items()):
            current = state.registry.apps.get(app)
            entry = current.entry if current else None
            if runtime.switching is None or entry is None or entry.mode == "self":
                continue  # a self-deploy's interruption is decided by its hand-off
            if any(v.trigger == "recovery" for v in active_deploys(state.deploys, app)):
                continue  # already queued by an earlier start
            view = await self._view(runtime.switching)
            if view is None or view.status != "interrupted":
                continue  # it ended on its own: succeeded, rolled back or failed
            release = last_verified(runtime)
            if release is None:
                if NOTHING_TO_RESTORE not in (view.reason or ""):  # a stop recorded it
                    note = ev.DeployInterrupted(app, f"{view.reason}; {NOTHING_TO_RESTORE}")
                    await self.ctx.ledger.append([NewEvent(f"deploy/{view.id}", note)], actor=ACTOR)
                continue
            name = container_name(app, entry)
            try:
                async with asyncio.timeout(5):
                    live = await self.ctx.engines.get(entry.server).inspect_container(name)
            except (EngineError, TimeoutError, KeyError) as exc:
                live = None  # unknown: restoring the verified release is always right
                log.warning("recovering %s: cannot inspect %s: %s", app, name, exc)
            if live is not None and runs_release(live, release.sha, release.image_id):
                continue  # the verified release still runs: the switch had not got that far
            request = ev.DeployRequested(
                app, "recovery", sha=release.sha, force=True, image_id=release.image_id
            )
            recovery = new_deploy_id()
            await self.ctx.ledger.append([NewEvent(f"deploy/{recovery}", request, 0)], actor=ACTOR)
            log.info(
                "deploy %s was interrupted mid-switch: restoring %s of %s in deploy %s",
                view.id, release.sha[:12], app, recovery,
            )  # fmt: skip

    async def _view(self, deploy_id: str) -> DeployView | None:
        live = self.ctx.state().deploys.views.get(deploy_id)
        return live or await read_deploy(self.ctx.ledger, deploy_id)

    async def _handoff_outcome(self, deploy_id: str, handoff: dict) -> list[ev.EventData]:
        h = handoff_of(handoff)
        try:
            engine = self.ctx.engines.get(h.server)
        except (KeyError, EngineError):  # the server left the config, or has no client
            engine = None  # now: judge by the SHA alone
        me = await whoami(engine)
        outcome = resolve(h, me, read_report(self.ctx.config, deploy_id))
        log.info("self-deploy hand-off to %s: %s", h.sha[:12], type(outcome[-1]).__name__)
        return outcome

    def _on_commit(self, batch: list[StoredEvent]) -> None:
        for stored in batch:
            data = stored.event.data
            if isinstance(data, ev.DeployRequested):
                self._kick(data.app)

    def _kick(self, app: str) -> None:
        worker = self._workers.get(app)
        if not self._closing and (worker is None or worker.done()):
            self._workers[app] = asyncio.get_running_loop().create_task(self._work(app))

    async def _work(self, app: str) -> None:
        while not self._closing:
            queued = [
                v for v in active_deploys(self.ctx.state().deploys, app) if v.status == "queued"
            ]
            queued.sort(key=lambda v: v.trigger != "recovery")  # restore first, then the rest
            if not queued:
                return
            run = DeployRun(self.ctx, queued[0])
            task = asyncio.get_running_loop().create_task(run.run())
            self._runs[run.id] = (run, task)
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():
                    run.stop_reason = run.stop_reason or "shutdown"
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                raise
            finally:
                self._runs.pop(run.id, None)

    def running(self, deploy_id: str) -> bool:
        return deploy_id in self._runs

    def handing_off(self, deploy_id: str) -> bool:
        """A self-deploy past its hand-off record: it can no longer be cancelled."""
        entry = self._runs.get(deploy_id)
        return entry is not None and entry[0].in_handoff

    async def cancel(self, deploy_id: str, reason: str) -> bool:
        """Stop a running deploy; it restores what was running and records why.

        Returns once the deploy has ended or its rollback is recorded: the restore
        may take minutes and goes on without the caller. False when the deploy does
        not run here; CancelRefused when a cancel can no longer act on it.
        """
        entry = self._runs.get(deploy_id)
        if entry is None:
            return False
        run, task = entry
        if run.in_handoff or run.ended:
            return False  # a deploy with its outcome recorded is not cancelled any more
        if run.stop_reason is not None:  # one cancel acts; another would cut its restore
            raise CancelRefused(f"is already being cancelled ({run.stop_reason})")
        if run.restoring:
            raise CancelRefused(
                "is rolling back to the last verified release; the restore is not interrupted"
            )
        run.stop_reason = reason
        while not run.began and not task.done():  # cancelled before its first step, a
            await asyncio.sleep(0)  # task runs no handler: let run() begin first
        task.cancel()
        recorded = asyncio.ensure_future(run.restore_recorded.wait())
        try:  # asyncio.wait, not gather: a caller that goes away must not cancel the run
            await asyncio.wait({task, recorded}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            recorded.cancel()
        return True

    async def close(self) -> None:
        """Interrupt running deploys (recorded as DeployInterrupted) and stop the workers."""
        self._closing = True
        for run, task in list(self._runs.values()):
            run.stop_reason = "shutdown"
            task.cancel()
        for _run, task in list(self._runs.values()):
            await asyncio.gather(task, return_exceptions=True)
        for worker in self._workers.values():
            worker.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
