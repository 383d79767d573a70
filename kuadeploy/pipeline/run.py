"""One deploy, step by step, every step an event in `deploy/<id>`.

Before the switch (fetch, migration gate, build, migrate) a failure ends the
deploy with the old container untouched. From the switch on (recreate, verify) a
failure or a cancel restores the last verified release from its recorded image —
never a rebuild — and verifies it. Success is appended only after verify passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kuadeploy import GIT_SHA
from kuadeploy import events as ev
from kuadeploy.adapters import git
from kuadeploy.adapters.docker import BuildFailed, EngineError
from kuadeploy.adapters.docker_specs import BUILD_ARG_SHA, LABEL_APP, release_labels
from kuadeploy.config import Config
from kuadeploy.entry import AppEntry, container_name
from kuadeploy.ledger import ConflictError, Ledger, NewEvent
from kuadeploy.notify import Notifier
from kuadeploy.pipeline import source
from kuadeploy.pipeline.engines import EnginePool
from kuadeploy.pipeline.globs import matching
from kuadeploy.pipeline.secrets import SecretError, hold, mask, release, resolve_env
from kuadeploy.pipeline.verify import VerifyFailed, verify_release
from kuadeploy.projector import State
from kuadeploy.selfdeploy.start import HandoffRefused, plan_handoff, wait_for_takeover
from projections.deploys import DeployView
from projections.runtime import Release, last_verified, newest_first

log = logging.getLogger(__name__)
ACTOR = "system"
_EXPECTED = (EngineError, git.GitError, SecretError, VerifyFailed, OSError, ValueError)


class StepError(Exception):
    def __init__(self, step: str, error: str):
        super().__init__(error)
        self.step = step


class GateExpired(Exception):
    pass


class Context:
    """What every deploy run shares: the ledger, live state, engines, settings."""

    def __init__(
        self,
        ledger: Ledger,
        state: Callable[[], State],
        config: Config,
        engines: EnginePool,
        notifier: Notifier,
    ):
        self.ledger = ledger
        self.state = state
        self.config = config
        self.engines = engines
        self.notifier = notifier
        self.data_dir = Path(config.data_dir)


class DeployRun:
    def __init__(self, ctx: Context, view: DeployView):
        self.ctx = ctx
        self.id = view.id
        self.app = view.app
        self.request = view
        self.stream = f"deploy/{view.id}"
        # the stream's version when the worker chose it (the view itself folds on)
        self.queued_version = len(view.events)
        self.stop_reason: str | None = None  # set by the runner before it cancels us
        self.switched = False
        # Rolling back: only shutdown may interrupt the restore (it makes a switch safe).
        # `restore_recorded` is set once RollbackStarted is in the ledger.
        self.restoring = False
        self.restore_recorded = asyncio.Event()
        self.run_ended = threading.Event()  # seen by this run's worker threads
        self.ended = False  # a terminal event was appended: never append a second
        self.began = False  # run() is under way: a cancel now reaches its handlers
        # self-deploy: from the hand-off record on, no user cancel; once the transient
        # container runs, the outcome is the next instance's to record, not ours
        self.in_handoff = False
        self.handed_off = False
        self.step_name: str | None = None
        self.env: dict[str, str] | None = None
        self.work = ctx.data_dir / "work" / view.id
        state = ctx.state()
        runtime = state.runtime.apps.get(view.app)
        # What a failure rolls back to and the gate compares with: the last verified
        # release, even when it no longer runs (a rollback before this one failed).
        self.previous: Release | None = last_verified(runtime)
        self.current: Release | None = runtime.current if runtime else None
        current = state.registry.apps.get(view.app)
        self.entry: AppEntry | None = current.entry if current else None

    # --- the whole run ----------------------------------------------------------------

    async def run(self) -> None:
        self.began = True
        try:
            await self._run()
        except asyncio.CancelledError:
            _uncancel()  # we own this cancellation: finish the bookkeeping
            if self.handed_off:
                return  # stopped by the hand-off itself: the next instance records it
            if self.ended:
                return  # stopped while pruning after its outcome: that outcome stands
            try:
                await self._stopped()
            except asyncio.CancelledError:  # shutdown while a cancel's rollback ran
                _uncancel()
                if not self.ended:
                    detail = f"kuadeploy stopped during {self.step_name}"
                    await self.emit(ev.DeployInterrupted(self.app, detail))
        except StepError:
            pass  # recorded
        except Exception as exc:  # a bug: still never leave a deploy "running"
            log.exception("deploy %s crashed", self.id)
            if not self.ended:
                reason = self.masked(f"internal error: {exc!r}")
                await self.emit(ev.DeployFailed(self.app, reason, self.step_name))
        finally:
            self.restore_recorded.set()  # nothing left to wait for
            self.run_ended.set()  # a fetch thread still running cleans up after itself
            shutil.rmtree(self.work, ignore_errors=True)
            if self.env:
                release(self.env.values())

    async def _run(self) -> None:
        if self.entry is None:
            await self._claim(ev.DeployFailed(self.app, "the app is no longer registered"))
            return
        if not await self._claim(ev.DeployStarted(self.app, self.request.sha)):
            return
        entry = self.entry
        if self.request.image_id is not None:  # a rollback request: a retained image
            sha, image_id = self.request.sha or "", self.request.image_id
        else:
            if entry.mode == "self":
                # No moment after a hand-off is ours to prune in (the new instance starts
                # while the old container still exists): earlier releases go now.
                await self.prune()
            sha = await self._before_switch(self.step("fetch", self.fetch, self._t("fetch")))
            if sha is None:
                return
            noop = None if self.request.force else self._noop(sha)
            if noop is not None:
                await self.emit(ev.DeployCancelled(self.app, noop))
                return
            touched = await self._before_switch(self.gate(sha))
            if touched is None:
                return
            image_id = await self._before_switch(
                self.step("build", lambda: self.build(sha), self._t("build"))
            )
            if image_id is None:
                return
            m = entry.migrations
            if m.command and (touched or not m.paths):
                done = await self._before_switch(
                    self.step("migrate", lambda: self.migrate(image_id, sha), self._t("migrate"))
                )
                if done is None:
                    return
        if (moved := self._registration_changed()) is not None:
            await self.emit(ev.DeployCancelled(self.app, moved))  # the container is left alone
            return
        if entry.mode == "self":
            await self.hand_off(sha, image_id)
            return
        self.switched = True
        try:
            await self.step("recreate", lambda: self.recreate(sha, image_id), self._t("recreate"))
            result = await self.step(
                "verify", lambda: self.verify(sha, image_id), self._verify_timeout()
            )
        except StepError as failure:
            await self._restore(f"{failure.step} failed: {failure}")
            return
        await self.emit(ev.DeploySucceeded(self.app, sha, image_id, result.get("container_id")))
        await self.prune()

    async def _before_switch(self, step: Awaitable[Any]) -> Any:
        """Run a step that touches nothing running; a failure ends the deploy."""
        try:
            return await step
        except StepError as failure:
            await self.emit(ev.DeployFailed(self.app, str(failure), failure.step))  # type: ignore[arg-type]
            return None
        except GateExpired as expired:
            await self.emit(ev.DeployCancelled(self.app, str(expired)))
            return None

    async def _stopped(self) -> None:
        reason, at = self.stop_reason or "cancelled", self.step_name or "start"
        if reason == "shutdown":
            # Stopping must be quick: no rollback now. Like a crash, the restart shows
            # the interruption, and runtime-status the drift if the switch had begun.
            await self.emit(ev.DeployInterrupted(self.app, f"kuadeploy stopped during {at}"))
            return
        if self.switched:
            # The rollback's outcome is the deploy's one terminal event (rolled_back),
            # its detail naming the cancel: the status says what runs now.
            await self._restore(f"{reason} during {at}")
        else:
            await self.emit(ev.DeployCancelled(self.app, f"{reason} during {at}"))

    async def _restore(self, why: str) -> None:
        self.restoring = True
        await self.rollback(why)

    def _registration_changed(self) -> str | None:
        """Why switching now would act on an app that is no longer this one, if so."""
        assert self.entry is not None
        current = self.ctx.state().registry.apps.get(self.app)
        entry = current.entry if current else None
        if entry is None:
            return "the app is no longer registered; nothing was switched"
        if entry.server != self.entry.server:
            return f"the app moved to server {entry.server}; nothing was switched"
        if container_name(self.app, entry) != self.container_name():
            return "the app's container was renamed; nothing was switched"
        return None

    # --- steps --------------------------------------------------------------------------

    async def step(self, name: str, body: Callable[[], Awaitable[Any]], timeout: float) -> Any:
        """StepStarted, the body under a timeout, StepSucceeded or StepFailed. The body
        returns (value, detail) or just a detail dict."""
        self.step_name = name
        await self.emit(ev.StepStarted(self.app, name))  # type: ignore[arg-type]
        detail: dict[str, Any] = {}
        try:
            async with asyncio.timeout(timeout):
                out = await body()
        except asyncio.CancelledError:
            reason = self.stop_reason or "cancelled"
            await self.emit(ev.StepFailed(self.app, name, reason))  # type: ignore[arg-type]
            raise
        except GateExpired as exc:
            await self.emit(ev.StepFailed(self.app, name, str(exc)))  # type: ignore[arg-type]
            raise
        except TimeoutError:
            error = f"{name} timed out after {timeout:g}s"
        except BuildFailed as exc:
            error, detail = str(exc), getattr(exc, "detail", {})
        except _EXPECTED as exc:
            error = str(exc) or repr(exc)
        else:
            value, detail = out if isinstance(out, tuple) else (out, out)
            await self.emit(ev.StepSucceeded(self.app, name, detail or {}))  # type: ignore[arg-type]
            return value
        error = self.masked(error)  # engine and verify errors quote what containers said
        await self.emit(ev.StepFailed(self.app, name, error, detail))  # type: ignore[arg-type]
        raise StepError(name, error)

    async def fetch(self) -> tuple[str, dict]:
        assert self.entry is not None
        entry, req = self.entry, self.request
        branch = req.ref or entry.branch
        if branch != entry.branch and not req.force:
            raise ValueError(f"ref {branch!r} is not the app's branch {entry.branch!r} (use force)")
        mirror_dir = self.ctx.data_dir / "repos" / self.app
        creds = source.credentials(entry.repo, self.ctx.config.git.credentials)
        # A push deploys the branch head it leads to: a late or replayed push must not
        # put its older commit over a newer one (latest wins).
        latest = req.trigger == "webhook"
        timeout = self._t("fetch")
        args = (entry.repo, mirror_dir, branch, req.sha, req.force, creds, self.work, latest)
        sha = await asyncio.to_thread(source.fetch_and_export, *args, timeout, self.run_ended)
        await self._resolve_env()
        detail = {"sha": sha, "branch": branch}
        if latest and req.sha and sha != req.sha:
            detail["pushed"] = req.sha
        return sha, detail

    async def gate(self, sha: str) -> list[str]:
        """Hold when the change since the last verified release touches migrations."""
        assert self.entry is not None
        migrations = self.entry.migrations
        if not migrations.paths:
            return []
        expiry = self.ctx.config.deploy.gate_expiry_s

        async def hold() -> tuple[list[str], dict]:
            old = self.previous.sha if self.previous else None
            mirror = self.ctx.data_dir / "repos" / self.app
            changed = await asyncio.to_thread(source.changed_paths, mirror, old, sha)
            touched = matching(changed, migrations.paths)
            detail: dict[str, Any] = {"touched": touched[:50], "since": old}
            if not touched or migrations.approval == "auto":
                return touched, {**detail, "approval": "auto" if touched else "not needed"}
            expires = datetime.now(UTC) + timedelta(seconds=expiry)
            stamp = expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            await self.emit(ev.MigrationGateHeld(self.app, touched[:50], stamp))
            deadline = time.monotonic() + expiry
            while (view := self._view()) is not None and view.status == "awaiting_approval":
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GateExpired(f"migration gate expired after {expiry:g}s without approval")
                if self.ctx.notifier.closed:
                    # Shutting down: wait() now returns at once, so looping on it never
                    # yields and the process never exits. No approval can come any more:
                    # sleep until the runner's close cancels us (DeployInterrupted).
                    await asyncio.sleep(remaining)
                else:
                    await self.ctx.notifier.wait(remaining)
            approved_by = view.gate.get("approved_by") if view and view.gate else None
            return touched, {**detail, "approval": "required", "approved_by": approved_by}

        # the gate's own expiry bounds the wait; the step timeout only guards the rest
        return await self.step("migration_gate", hold, expiry + 60)

    async def build(self, sha: str) -> tuple[str, dict]:
        assert self.entry is not None
        entry = self.entry
        logs = self.ctx.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{self.id}-build.log"
        digest, tail = hashlib.sha256(), deque(maxlen=20)

        with open(log_path, "w") as out:

            def on_log(line: str) -> None:
                line = self.masked(line)  # builds get no secrets: this is only a safety net
                out.write(line + "\n")
                digest.update((line + "\n").encode())
                tail.append(line)

            context = self.work / "src" / entry.context
            try:
                image_id = await self.engine().build(
                    context,
                    tag=f"kua-{self.app}:{sha}",
                    dockerfile=entry.dockerfile,
                    build_args={**entry.build_args, BUILD_ARG_SHA: sha},
                    labels=release_labels(self.app, sha, self.id),
                    on_log=on_log,
                )
            except BuildFailed as exc:
                out.flush()
                exc.detail = {  # type: ignore[attr-defined]
                    "log": str(log_path),
                    "log_sha256": digest.hexdigest(),
                    "tail": list(tail),
                }
                raise
        detail = {
            "image_id": image_id,
            "log": str(log_path),
            "log_sha256": digest.hexdigest(),
            "tail": list(tail)[-5:],
        }
        return image_id, detail

    async def migrate(self, image_id: str, sha: str) -> dict:
        assert self.entry is not None and self.entry.migrations.command
        command = self.entry.migrations.command
        result = await self.engine().run_once(
            image_id,
            command,
            self.entry.container,
            labels=release_labels(self.app, sha, self.id),
            sha=sha,
            resolved_env=self.env or {},
            timeout_s=self._t("migrate"),
        )
        # the container ran with the resolved secrets: mask before anything is cut or quoted
        tail = self.masked(result.output).splitlines()[-10:]
        if result.exit_code != 0:
            raise ValueError(f"migration {command} exited with {result.exit_code}: {tail[-3:]}")
        return {"command": command, "exit_code": 0, "tail": tail}

    async def recreate(self, sha: str, image_id: str) -> dict:
        container_id = await self._replace_container(sha, image_id, self.id)
        detail: dict[str, Any] = {"container_id": container_id, "image_id": image_id}
        if self.previous is not None:
            detail["previous"] = {"sha": self.previous.sha, "image_id": self.previous.image_id}
        return detail

    async def verify(self, sha: str, image_id: str) -> dict:
        assert self.entry is not None
        return await verify_release(
            self.engine(),
            self.container_name(),
            sha,
            image_id,
            self.entry.verify,
            self.ctx.config.deploy.health_poll_s,
            self.masked,
        )

    async def hand_off(self, sha: str, image_id: str) -> None:
        """Self-deploy: hand over to a transient container from the new image (see
        kuadeploy/selfdeploy). This instance records only a failure to hand over."""
        assert self.entry is not None
        self.step_name = "recreate"
        await self.emit(ev.StepStarted(self.app, "recreate"))
        engine = self.engine()
        try:
            async with asyncio.timeout(self._t("recreate")):
                handoff, body = await plan_handoff(
                    engine, self.entry, self.app, self.id, sha, image_id
                )
        except (HandoffRefused, EngineError, TimeoutError) as exc:
            await self._handoff_failed(str(exc) or repr(exc))
            return
        self.in_handoff = True
        await self.emit(handoff)
        start = asyncio.ensure_future(engine.create_and_start(handoff.transient, body))
        try:
            await asyncio.shield(start)
        except asyncio.CancelledError:  # shutting down: did the transient start?
            await asyncio.gather(start, return_exceptions=True)
            self.handed_off = not start.cancelled() and start.exception() is None
            raise
        except EngineError as exc:
            self.in_handoff = False
            await self._handoff_failed(f"the hand-off container did not start: {exc}")
            return
        self.handed_off = True
        log.info("deploy %s: handed over to %s", self.id, handoff.transient)
        why = await wait_for_takeover(engine, handoff)
        self.handed_off = self.in_handoff = False
        await self._handoff_failed(why)

    async def _handoff_failed(self, reason: str) -> None:
        reason = self.masked(reason)
        await self.emit(ev.StepFailed(self.app, "recreate", reason))
        await self.emit(ev.DeployFailed(self.app, reason, "recreate"))

    def _noop(self, sha: str) -> str | None:
        """Why deploying `sha` would change nothing, if it would not."""
        if self.current is not None and self.current.sha == sha:
            return f"{sha} is already the verified release; nothing to do"
        if self.entry is not None and self.entry.mode == "self" and sha == GIT_SHA:
            return f"kuadeploy already runs {sha}; nothing to do"
        return None

    async def rollback(self, why: str) -> None:
        prev = self.previous
        await self.emit(
            ev.RollbackStarted(
                self.app, prev.sha if prev else None, prev.image_id if prev else None
            )
        )

        async def restore() -> dict:
            if prev is None:
                await self.engine().remove_container(self.container_name(), force=True)
                return {"left_stopped": True}
            await self._replace_container(prev.sha, prev.image_id, prev.deploy)
            return await self.verify(prev.sha, prev.image_id)

        try:
            await self.step("rollback", restore, self._verify_timeout() + self._t("recreate"))
        except StepError as failure:
            await self.emit(
                ev.RolledBack(
                    self.app,
                    prev.sha if prev else None,
                    prev.image_id if prev else None,
                    verified=False,
                    detail=f"{why}; rollback failed: {failure}",
                )
            )
            return
        if prev is None:
            detail = f"{why}; no earlier release: the app is left stopped"
            await self.emit(ev.RolledBack(self.app, None, None, verified=False, detail=detail))
        else:
            detail = f"{why}; back on the verified release {prev.sha[:12]}"
            await self.emit(ev.RolledBack(self.app, prev.sha, prev.image_id, True, detail))

    async def prune(self) -> None:
        """Keep the images of the newest `keep_releases` releases; remove older ones.
        Housekeeping: bounded like a step (an engine that accepts and never answers
        would keep the deploy 'running', or the app's queue blocked, for good)."""
        try:
            async with asyncio.timeout(self._t("recreate")):
                await self._prune()
        except TimeoutError:
            log.warning("pruning images of %s: no answer from the engine in time", self.app)

    async def _prune(self) -> None:
        assert self.entry is not None
        runtime = self.ctx.state().runtime.apps.get(self.app)
        if runtime is None:
            return
        keep = {r.image_id for r in newest_first(runtime)[: self.entry.keep_releases]}
        try:
            images = await self.engine().list_images({LABEL_APP: self.app})
        except EngineError as exc:  # pruning is housekeeping: never fails a deploy
            log.warning("pruning images of %s: %s", self.app, exc)
            return
        for image in images:
            if image.id not in keep:
                try:
                    await self.engine().remove_image(image.id, force=False)
                except EngineError as exc:  # in use, say: the next prune tries again
                    log.warning("pruning image %s of %s: %s", image.id[:19], self.app, exc)

    # --- helpers ------------------------------------------------------------------------

    async def _replace_container(self, sha: str, image_id: str, deploy_id: str) -> str:
        assert self.entry is not None
        engine, name = self.engine(), self.container_name()
        env = await self._resolve_env()
        await engine.stop_container(name, timeout_s=10)
        await engine.remove_container(name, force=True)
        return await engine.start_container(
            name,
            self.entry.container,
            image=image_id,
            labels=release_labels(self.app, sha, deploy_id),
            sha=sha,
            resolved_env=env,
        )

    async def _claim(self, first: ev.EventData) -> bool:
        """Append the run's first event only if the stream is still as the worker saw
        it queued: a request or cancel in between may have superseded or cancelled it,
        and a deploy with its outcome recorded must never run (False: nothing to do)."""
        try:
            await self.emit(first, expected_version=self.queued_version)
        except ConflictError:
            self.ended = True  # ended by whoever appended first
            return False
        return True

    async def emit(self, data: ev.EventData, expected_version: int | None = None) -> None:
        # Shielded: a cancel arriving mid-append must not leave the event half-decided.
        self.ended = self.ended or isinstance(data, _TERMINAL)
        item = NewEvent(self.stream, data, expected_version)
        await asyncio.shield(self.ctx.ledger.append([item], actor=ACTOR))
        if isinstance(data, ev.RollbackStarted):
            self.restore_recorded.set()

    async def _resolve_env(self) -> dict[str, str]:
        """The app's secret values, resolved once per run (and masked in the log)."""
        assert self.entry is not None
        if self.env is None:
            self.env = await resolve_env(self.entry.container, self.ctx.config.secrets)
            hold(self.env.values())
        return self.env

    def masked(self, text: str) -> str:
        """Output we did not write, with this app's resolved secret values masked."""
        return mask(text, (self.env or {}).values())

    def engine(self):
        assert self.entry is not None
        return self.ctx.engines.get(self.entry.server)

    def container_name(self) -> str:
        assert self.entry is not None
        return container_name(self.app, self.entry)

    def _view(self) -> DeployView | None:
        return self.ctx.state().deploys.views.get(self.id)

    def _t(self, step: str) -> float:
        return float(getattr(self.ctx.config.deploy, f"{step}_timeout_s"))

    def _verify_timeout(self) -> float:
        assert self.entry is not None
        v = self.entry.verify
        return v.timeout_s + v.stable_s + self.ctx.config.deploy.verify_grace_s


_TERMINAL = (
    ev.DeploySucceeded,
    ev.DeployFailed,
    ev.RolledBack,
    ev.DeployCancelled,
    ev.DeployInterrupted,
)


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
