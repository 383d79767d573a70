"""Deploy progress: each deploy's status and steps, and which deploys are in flight.

`fold_deploy` folds one `deploy/<id>` stream into a DeployView (the API's shape).
`fold_deploys` keeps only what must stay in memory: every deploy that is not
finished, plus the latest deploy of each app. Finished deploys are read back
from their stream on demand, so memory does not grow with the log.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kuadeploy.events import (
    DeployCancelled,
    DeployFailed,
    DeployInterrupted,
    DeployRequested,
    DeployStarted,
    DeploySucceeded,
    DeploySuperseded,
    Envelope,
    MigrationApproved,
    MigrationGateHeld,
    RollbackStarted,
    RolledBack,
    SelfHandoffStarted,
    StepFailed,
    StepStarted,
    StepSucceeded,
)

ACTIVE = frozenset({"queued", "running", "awaiting_approval"})


class StepView(msgspec.Struct):
    name: str
    status: str  # running | succeeded | failed
    started: str
    finished: str | None = None
    detail: dict[str, Any] = {}


class DeployView(msgspec.Struct):
    id: str
    app: str
    status: str
    trigger: str
    sha: str | None
    requested: str
    requested_by: str
    force: bool = False
    ref: str | None = None
    image_id: str | None = None
    started: str | None = None
    finished: str | None = None
    reason: str | None = None
    superseded_by: str | None = None
    delivery: str | None = None
    pusher: str | None = None
    gate: dict[str, Any] | None = None
    rolled_back_to: str | None = None
    # a self-deploy waiting for the next instance to record its outcome (SelfHandoffStarted)
    handoff: dict[str, Any] | None = None
    steps: list[StepView] = []
    events: list[int] = []


def deploy_id(stream: str) -> str:
    """The id of the deploy whose events are in `stream` (`deploy/<id>`)."""
    return stream.removeprefix("deploy/")


def fold_deploy(view: DeployView | None, ev: Envelope) -> DeployView | None:
    data = ev.data
    if isinstance(data, DeployRequested):
        view = DeployView(
            id=deploy_id(ev.stream),
            app=data.app,
            status="queued",
            trigger=data.trigger,
            sha=data.sha,
            requested=ev.ts,
            requested_by=ev.actor,
            force=data.force,
            ref=data.ref,
            image_id=data.image_id,
            delivery=data.delivery,
            pusher=data.pusher,
        )
    if view is None:  # a stream that does not start with DeployRequested is not a deploy
        return None
    if not isinstance(data, DeployRequested):
        _apply(view, ev)
    view.events.append(ev.seq)
    return view


def _apply(view: DeployView, ev: Envelope) -> None:
    step = _STEPS.get(type(ev.data))
    if step is not None:
        step(view, ev, ev.data)


def _started(view: DeployView, ev: Envelope, data: DeployStarted) -> None:
    view.status, view.started = "running", ev.ts
    view.sha = data.sha or view.sha


def _step_started(view: DeployView, ev: Envelope, data: StepStarted) -> None:
    view.steps.append(StepView(data.step, "running", ev.ts))


def _step_ended(view: DeployView, ev: Envelope, data: StepSucceeded | StepFailed) -> None:
    step = _open_step(view, data.step)
    step.status = "succeeded" if isinstance(data, StepSucceeded) else "failed"
    step.finished = ev.ts
    step.detail = dict(data.detail)
    if data.step == "fetch" and isinstance(data.detail.get("sha"), str):
        view.sha = data.detail["sha"]  # the branch head, resolved
    if isinstance(data, StepFailed):
        step.detail["error"] = data.error


def _gate_held(view: DeployView, ev: Envelope, data: MigrationGateHeld) -> None:
    view.status = "awaiting_approval"
    view.gate = {"paths": data.paths, "expires_at": data.expires_at}


def _gate_approved(view: DeployView, ev: Envelope, data: MigrationApproved) -> None:
    view.status = "running"
    if view.gate is not None:
        view.gate = {**view.gate, "approved_by": ev.actor, "approved_at": ev.ts}


def _handoff(view: DeployView, ev: Envelope, data: SelfHandoffStarted) -> None:
    view.handoff = {"seq": ev.seq, **msgspec.to_builtins(data)}


def _succeeded(view: DeployView, ev: Envelope, data: DeploySucceeded) -> None:
    _finish(view, ev, "succeeded")
    view.sha, view.image_id = data.sha, data.image_id


def _failed(view: DeployView, ev: Envelope, data: DeployFailed) -> None:
    _finish(view, ev, "failed", data.reason)


def _rollback_started(view: DeployView, ev: Envelope, data: RollbackStarted) -> None:
    view.status, view.finished = "running", None


def _rolled_back(view: DeployView, ev: Envelope, data: RolledBack) -> None:
    if not data.verified:  # restore failed, or nothing to restore: nothing verified runs
        _finish(view, ev, "failed", data.detail or view.reason)
        return
    _finish(view, ev, "rolled_back", data.detail or view.reason)
    view.rolled_back_to = data.sha


def _cancelled(view: DeployView, ev: Envelope, data: DeployCancelled) -> None:
    _finish(view, ev, "cancelled", data.reason)


def _superseded(view: DeployView, ev: Envelope, data: DeploySuperseded) -> None:
    _finish(view, ev, "superseded", f"superseded by {data.by}")
    view.superseded_by = data.by


def _interrupted(view: DeployView, ev: Envelope, data: DeployInterrupted) -> None:
    _finish(view, ev, "interrupted", data.reason)


_STEPS: dict[type, Any] = {
    DeployStarted: _started,
    StepStarted: _step_started,
    StepSucceeded: _step_ended,
    StepFailed: _step_ended,
    MigrationGateHeld: _gate_held,
    MigrationApproved: _gate_approved,
    DeploySucceeded: _succeeded,
    DeployFailed: _failed,
    RollbackStarted: _rollback_started,
    RolledBack: _rolled_back,
    DeployCancelled: _cancelled,
    DeploySuperseded: _superseded,
    DeployInterrupted: _interrupted,
    SelfHandoffStarted: _handoff,
}
# the payload types fold_deploys reacts to: every type a deploy stream holds
FOLDED = frozenset({DeployRequested, *_STEPS})


def _open_step(view: DeployView, name: str) -> StepView:
    for step in reversed(view.steps):
        if step.name == name:
            return step
    step = StepView(name, "running", "")
    view.steps.append(step)
    return step


def _finish(view: DeployView, ev: Envelope, status: str, reason: str | None = None) -> None:
    view.status, view.finished = status, ev.ts
    if reason:
        view.reason = reason
    for step in view.steps:  # a step still open when the deploy ends did not finish
        if step.status == "running":
            step.status, step.finished = "failed", ev.ts


class Deploys(msgspec.Struct):
    views: dict[str, DeployView] = {}  # active deploys and each app's latest
    latest: dict[str, str] = {}  # app -> id of its most recently requested or started deploy


def fold_deploys(state: Deploys, ev: Envelope) -> Deploys:
    if not ev.stream.startswith("deploy/"):
        return state
    deploy = deploy_id(ev.stream)
    view = state.views.get(deploy)
    if view is None and not isinstance(ev.data, DeployRequested):
        return state  # a finished, no longer latest deploy: nothing live depends on it
    view = fold_deploy(view, ev)
    if view is None:
        return state
    state.views[deploy] = view
    # the latest is the newest request, or a deploy queued earlier that starts after it
    # (a recovery runs first): progress shows what runs now
    if isinstance(ev.data, DeployRequested | DeployStarted):
        previous = state.latest.get(view.app)
        state.latest[view.app] = deploy
        if previous is not None and previous != deploy:
            _forget_if_done(state, previous)
    if view.status not in ACTIVE:
        _forget_if_done(state, deploy)
    return state


def _forget_if_done(state: Deploys, deploy: str) -> None:
    view = state.views.get(deploy)
    if view is not None and view.status not in ACTIVE and state.latest.get(view.app) != deploy:
        del state.views[deploy]


def active_deploys(state: Deploys, app: str | None = None) -> list[DeployView]:
    """In-flight deploys in request order (the first event seq orders them)."""
    views = [v for v in state.views.values() if v.status in ACTIVE]
    if app is not None:
        views = [v for v in views if v.app == app]
    return sorted(views, key=lambda v: v.events[0])
