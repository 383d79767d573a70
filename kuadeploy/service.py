"""The application: the ledger, the live projections and the commands over them.

HTTP handlers and CLI commands call methods here; nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec

from kuadeploy.adapters.docker import EngineError
from kuadeploy.adapters.docker_specs import LABEL_SHA
from kuadeploy.audit.checkpointer import Checkpointer, CheckpointRefused
from kuadeploy.audit.keys import KeyFileError
from kuadeploy.audit.startup import LedgerRewound, open_checked
from kuadeploy.commands import deploys as dep
from kuadeploy.commands import registry as reg
from kuadeploy.config import Config
from kuadeploy.entry import container_name
from kuadeploy.errors import ApiError
from kuadeploy.export import AtError, export_at, render_export, resolve_at
from kuadeploy.files import write_atomic
from kuadeploy.ledger import ConflictError, Ledger, VerifyResult, reading
from kuadeploy.ledger.chain import GENESIS
from kuadeploy.ledger.store import utc_now
from kuadeploy.ledger.verify import load_trusted, save_trusted, verify_ledger
from kuadeploy.legacy import LegacyImportError, plan_legacy_import
from kuadeploy.notify import Notifier
from kuadeploy.pipeline.engines import EnginePool
from kuadeploy.pipeline.run import Context
from kuadeploy.pipeline.runner import CancelRefused, DeployRunner
from kuadeploy.pipeline.verify import runs_release
from kuadeploy.projector import Projector, load_state, read_deploy
from kuadeploy.sinks.git import GitSink
from kuadeploy.tokens import TokenBook, add_token, read_token_file
from projections.deploys import DeployView
from projections.history import Change, fold_history
from projections.runtime import last_verified, newest_first

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The service must not start; the message says why."""


class Service:
    def __init__(self, config: Config, ledger: Ledger, projector: Projector, lock_fd: int):
        self.engines = EnginePool(config.servers)
        self.config = config
        self.ledger = ledger
        self.projector = projector
        self.tokens = TokenBook(config)
        self.servers = set(config.servers)
        self.last_verify: VerifyResult | None = None
        self._verify_lock = asyncio.Lock()
        # One decision at a time per app: the stream versions already make appends
        # atomic, but two requests deciding on one state would both queue a deploy (new
        # streams never conflict), and contending PATCHes would retry instead of queueing.
        self._app_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._lock_fd = lock_fd
        self.bootstrap_token: str | None = None
        self.notifier = Notifier()
        ledger.subscribe(self.notifier.notify)
        self._health: dict[str, Any] = {}
        context = Context(ledger, lambda: projector.state, config, self.engines, self.notifier)
        self.runner = DeployRunner(context)
        self.sinks: list[GitSink] = []
        self.checkpointer: Checkpointer | None = None

    @classmethod
    async def open(cls, config: Config, *, accept_ledger_rewind: bool = False) -> Service:
        """Open the ledger after checking it against the last signed checkpoint (a
        shorter or rewritten ledger is refused unless `accept_ledger_rewind`)."""
        data = Path(config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock_data_dir(data)
        try:
            audited = await open_checked(config, allow_rewind=accept_ledger_rewind)
        except (LedgerRewound, CheckpointRefused, KeyFileError) as exc:
            # a key file or origin the user configured is theirs to mend: one line
            os.close(lock_fd)
            raise StartupError(str(exc)) from exc
        except BaseException:
            os.close(lock_fd)
            raise
        ledger = audited.ledger
        try:
            state = await asyncio.to_thread(_load_state, config.ledger_path)
            projector = Projector(state, config.snapshot_every)
            projector.attach(ledger)
            service = cls(config, ledger, projector, lock_fd)
            service.checkpointer = audited.checkpointer
            await service._import_legacy()
            service._bootstrap_admin_token()
            await service.runner.start()
            service._start_sinks()
        except BaseException:
            await ledger.close()
            os.close(lock_fd)
            raise
        return service

    async def close(self) -> None:
        await self.runner.close()
        await self.engines.close()
        await self.ledger.close()  # before the sinks: its last batches still reach them
        for sink in self.sinks:
            await sink.close()
        os.close(self._lock_fd)

    def locked(self, *apps: str) -> contextlib.AbstractAsyncContextManager:
        """Hold the decision locks of `apps` (taken in sorted order: no deadlock)."""
        if len(apps) == 1:  # the usual case, on every change: no generator, no stack
            return self._app_locks[apps[0]]
        return self._locked_many(sorted(set(apps)))

    @contextlib.asynccontextmanager
    async def _locked_many(self, apps: list[str]) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for app in apps:
                await stack.enter_async_context(self._app_locks[app])
            yield

    def health_details(self) -> dict[str, Any]:
        """Extra `/healthz` fields: problems that do not stop the service (a failing sink…)."""
        details = dict(self._health)
        cp = self.checkpointer
        if cp is not None:
            latest = cp.latest
            details["checkpoint"] = {
                "ok": cp.failure is None and cp.mirror_error is None,
                "size": latest.size if latest else None,
                "error": cp.failure or cp.mirror_error,
            }
        return details

    def report_health(self, key: str, value: Any) -> None:
        self._health[key] = value

    def sink_failures(self) -> int:
        return sum(sink.failures for sink in self.sinks)

    @property
    def registry(self):
        return self.projector.state.registry

    # --- start-up -------------------------------------------------------------------

    async def _import_legacy(self) -> None:
        path = self.config.legacy_registry
        if not path or self.ledger.head.seq > 0:
            return  # only ever into an empty ledger: the ledger is the authority after that
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise StartupError(f"legacy_registry {path}: {exc.strerror}") from exc
        try:
            items = plan_legacy_import(raw, path, self.servers)
        except LegacyImportError as exc:
            raise StartupError(str(exc)) from exc
        await self.ledger.append(items, actor="system")
        log.info("imported %d apps from legacy registry %s", len(items) - 1, path)

    def _bootstrap_admin_token(self) -> None:
        if self.config.tokens or read_token_file(self.config.data_dir).tokens:
            return
        self.bootstrap_token = add_token(self.config.data_dir, "admin", "admin")
        self.tokens = TokenBook(self.config)

    def _start_sinks(self) -> None:
        """Mirrors of the registry, fed after each commit; never in the way of appends."""
        git = self.config.export.git
        if git is not None:
            report, timeout_s = self._sink_reporter("git"), self.config.deploy.fetch_timeout_s
            # libgit2's transport timeouts are process-wide: the same as a deploy's fetch
            sink = GitSink(git, self.ledger, self.config.data_dir, report, timeout_s=timeout_s)
            self.sinks.append(sink)
            sink.start()

    def _sink_reporter(self, name: str):
        def report(status: dict[str, Any]) -> None:
            self.report_health("sinks", {**self._health.get("sinks", {}), name: status})

        return report

    # --- registry -------------------------------------------------------------------

    def app_version(self, app: str) -> int:
        current = self.registry.apps.get(app)
        if current is None or current.entry is None:
            raise ApiError.not_found(f"app {app!r} is not registered")
        return current.version

    def get_app(self, app: str) -> dict[str, Any]:
        current = self.registry.apps.get(app)
        if current is None or current.entry is None:
            raise ApiError.not_found(f"app {app!r} is not registered")
        return {"app": app, "entry": msgspec.to_builtins(current.entry), "version": current.version}

    def list_apps(self) -> dict[str, Any]:
        apps = [
            {"app": name, "entry": msgspec.to_builtins(s.entry), "version": s.version}
            for name, s in sorted(self.registry.apps.items())
            if s.entry is not None
        ]
        return {"apps": apps}

    async def put_app(
        self, app: str, body: Any, actor: str, pre: reg.Preconditions, dry_run: bool
    ) -> reg.Outcome:
        def decide(current):
            return reg.decide_put(app, current, body, self.servers, pre, self.registry.apps)

        return await self._execute(app, decide, actor, pre, dry_run)

    async def patch_app(
        self, app: str, patch: Any, actor: str, pre: reg.Preconditions, dry_run: bool
    ) -> reg.Outcome:
        def decide(current):
            return reg.decide_patch(app, current, patch, self.servers, pre, self.registry.apps)

        return await self._execute(app, decide, actor, pre, dry_run)

    async def delete_app(
        self, app: str, actor: str, pre: reg.Preconditions, dry_run: bool
    ) -> reg.Outcome:
        return await self._execute(
            app, lambda current: reg.decide_delete(app, current, pre), actor, pre, dry_run
        )

    async def _execute(self, app, decide, actor, pre, dry_run) -> reg.Outcome:
        async with contextlib.nullcontext() if dry_run else self.locked(app):
            return await reg.execute(
                self.ledger,
                self.registry,
                app,
                decide,
                actor=actor,
                dry_run=dry_run,
                strict=pre.if_match is not None,
            )

    async def history(self, app: str) -> list[Change]:
        changes: list[Change] = []
        for stored in await self.ledger.read_stream(f"app/{app}"):
            fold_history(changes, stored.event)
        if not changes:
            raise ApiError.not_found(f"app {app!r} has no history")
        return changes

    # --- deploys ----------------------------------------------------------------------

    @property
    def state(self):
        return self.projector.state

    async def request_deploy(
        self, app: str, actor: str, trigger: str = "api", **request: Any
    ) -> dep.Requested:
        """Queue a deploy (or say why it is a no-op); the runner picks it up."""
        async with self.locked(app):
            return await self._request_deploy(app, actor, trigger, **request)

    async def _request_deploy(
        self, app: str, actor: str, trigger: str, **request: Any
    ) -> dep.Requested:
        deploy_id = dep.new_deploy_id()
        for _ in range(50):
            s = self.state
            decision = dep.decide_request(
                app,
                s.registry,
                s.deploys,
                s.runtime,
                deploy_id=deploy_id,
                trigger=trigger,
                **request,
            )
            if decision.noop:
                return decision
            try:
                await self.ledger.append(decision.events, actor=actor)
            except ConflictError:
                continue  # a queued deploy changed under us: decide again
            return decision
        raise ApiError(503, "Busy", f"deploys of {app} keep changing; try again")

    async def rollback(self, app: str, to: str | None, actor: str) -> dep.Requested:
        current = self.registry.apps.get(app)
        if current is None or current.entry is None:
            raise ApiError.not_found(f"app {app!r} is not registered")
        keep = current.entry.keep_releases
        sha, image_id = dep.decide_rollback(app, self.state.runtime, to, keep)
        return await self.request_deploy(
            app, actor, trigger="rollback", sha=sha, image_id=image_id, force=True
        )

    async def cancel_deploy(self, deploy_id: str, actor: str) -> DeployView:
        view = self.state.deploys.views.get(deploy_id) or await self.deploy_view(deploy_id)
        if self.runner.handing_off(deploy_id):
            raise ApiError.conflict(
                f"deploy {deploy_id} is handing kuadeploy over to its new release; "
                "it ends on its own (succeeded, or rolled back)"
            )
        try:
            if not await self.runner.cancel(deploy_id, f"cancelled by {actor}"):
                view = await self.deploy_view(deploy_id)  # it may have ended meanwhile
                try:
                    await self.ledger.append(dep.decide_cancel(view, deploy_id), actor=actor)
                except ConflictError:  # it just started: stop the run instead
                    await self.runner.cancel(deploy_id, f"cancelled by {actor}")
        except CancelRefused as refused:
            raise ApiError.conflict(f"deploy {deploy_id} {refused}") from None
        return await self.deploy_view(deploy_id)

    async def approve_deploy(self, deploy_id: str, actor: str) -> DeployView:
        view = self.state.deploys.views.get(deploy_id) or await self.deploy_view(deploy_id)
        try:
            await self.ledger.append(dep.decide_approve(view, deploy_id), actor=actor)
        except ConflictError as exc:
            raise ApiError.conflict(f"deploy {deploy_id} changed; look again") from exc
        return await self.deploy_view(deploy_id)

    async def deploy_view(self, deploy_id: str) -> DeployView:
        view = await read_deploy(self.ledger, deploy_id)
        if view is None:
            raise ApiError.not_found(f"deploy {deploy_id!r} not found")
        return view

    def progress(self, app: str) -> DeployView:
        deploy_id = self.state.deploys.latest.get(app)
        view = self.state.deploys.views.get(deploy_id) if deploy_id else None
        if view is None:
            raise ApiError.not_found(f"{app!r} has no deploys")
        return view

    async def runtime_status(self, app: str) -> dict[str, Any]:
        current = self.registry.apps.get(app)
        if current is None or current.entry is None:
            raise ApiError.not_found(f"app {app!r} is not registered")
        entry = current.entry
        runtime = self.state.runtime.apps.get(app)
        # the last verified release, also when it no longer runs (drift then says so)
        release = last_verified(runtime)
        out: dict[str, Any] = {
            "app": app,
            "server": entry.server,
            "release": msgspec.to_builtins(release),
            # the rollback targets: older releases' images are pruned after each deploy
            "releases": msgspec.to_builtins(newest_first(runtime)[: entry.keep_releases])
            if runtime
            else [],
        }
        name = container_name(app, entry)
        try:
            async with asyncio.timeout(5):
                state = await self.engines.get(entry.server).inspect_container(name)
        except (EngineError, TimeoutError) as exc:
            out.update(container=None, engine_error=str(exc) or "engine timed out", drift=None)
            return out
        if state is None:
            out.update(container=None, drift=release is not None)
            return out
        running_sha = state.labels.get(LABEL_SHA)
        out["container"] = {
            "id": state.id,
            "name": state.name,
            "running": state.running,
            "status": state.status,
            "sha": running_sha,
            "image_id": state.image_id,
            "restart_count": state.restart_count,
            "started_at": state.started_at.isoformat() if state.started_at else None,
        }
        out["drift"] = release is None or not runs_release(state, release.sha, release.image_id)
        return out

    # --- export and audit -------------------------------------------------------------

    async def export(self, at: str | None) -> dict[str, Any]:
        if at is None:
            head = self.ledger.head
            return render_export(self.registry, head.seq, self.ledger.head_ts, head.hash)
        path = self.config.ledger_path

        def at_point() -> dict[str, Any]:
            with closing(reading.open_readonly(path)) as conn:
                return export_at(conn, resolve_at(conn, at, utc_now()))

        try:
            return await asyncio.to_thread(at_point)
        except AtError as exc:
            raise ApiError(422, "Invalid point in time", str(exc)) from exc

    async def write_export_file(self, doc: dict[str, Any]) -> str:
        stamp = utc_now().replace(":", "").replace("-", "")
        name = f"registry-{stamp}-seq{doc['as_of']['seq']}.json"
        path = Path(self.config.data_dir) / "exports" / name
        data = msgspec.json.format(msgspec.json.encode(doc))
        await asyncio.to_thread(write_atomic, path, data)
        return str(path)

    async def verify(self, full: bool) -> VerifyResult:
        """Incremental from the last verified point (so it stays fast), or from event 1."""
        async with self._verify_lock:
            data_dir, path = self.config.data_dir, self.config.ledger_path

            def run() -> VerifyResult:
                start = GENESIS if full else load_trusted(data_dir)
                with closing(reading.open_readonly(path)) as conn:
                    result = verify_ledger(conn, start)
                if result.ok:
                    save_trusted(data_dir, result.head)
                    total = result.head.seq
                    return msgspec.structs.replace(result, events=total)
                return result

            self.last_verify = await asyncio.to_thread(run)
            return self.last_verify


def _load_state(path: str):
    with closing(reading.open_readonly(path)) as conn:
        return load_state(conn)


def _lock_data_dir(data: Path) -> int:
    fd = os.open(data / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupError(f"{data} is in use by another kuadeploy server") from None
    return fd
