"""Runtime status: per app, the last verified release and the releases kept to roll back to."""

from __future__ import annotations

import msgspec

from kuadeploy.events import DeploySucceeded, Envelope, RolledBack, StepStarted
from projections.deploys import deploy_id

# Enough history for any keep_releases (≤ 100); older releases are pruned by the pipeline.
MAX_RELEASES = 100


class Release(msgspec.Struct):
    sha: str
    image_id: str
    deploy: str
    ts: str


class AppRuntime(msgspec.Struct):
    current: Release | None = None  # the verified release that runs; None: nothing verified
    # image id -> release, oldest first; a dict makes re-deploying an image O(1)
    releases: dict[str, Release] = {}
    # The release that verified last. Unlike `current` it survives a failed rollback:
    # it is what later deploys and rollbacks restore.
    last_verified: Release | None = None
    # The deploy whose container switch began and did not end on a verified release:
    # if it was interrupted, start-up restores `last_verified` (pipeline/runner.py).
    switching: str | None = None


def newest_first(app: AppRuntime) -> list[Release]:
    return list(reversed(app.releases.values()))


def last_verified(app: AppRuntime | None) -> Release | None:
    return None if app is None else app.last_verified  # set wherever `current` is


class Runtime(msgspec.Struct):
    apps: dict[str, AppRuntime] = {}


def fold_runtime(state: Runtime, ev: Envelope) -> Runtime:
    data = ev.data
    if isinstance(data, StepStarted):
        if data.step == "recreate":
            state.apps.setdefault(data.app, AppRuntime()).switching = deploy_id(ev.stream)
        return state
    step = _STEPS.get(type(data))
    if step is not None:
        step(state.apps.setdefault(data.app, AppRuntime()), ev)
    return state


def _succeeded(app: AppRuntime, ev: Envelope) -> None:
    data = ev.data
    release = Release(data.sha, data.image_id, deploy_id(ev.stream), ev.ts)
    app.current = app.last_verified = release
    app.switching = None
    app.releases.pop(data.image_id, None)
    app.releases[data.image_id] = release
    if len(app.releases) > MAX_RELEASES:
        del app.releases[next(iter(app.releases))]


def _rolled_back(app: AppRuntime, ev: Envelope) -> None:
    data = ev.data
    if data.sha is None or data.image_id is None or not data.verified:
        app.current = None  # nothing verified runs; `last_verified` is still the target
        return
    known = app.releases.get(data.image_id)
    release = known or Release(data.sha, data.image_id, deploy_id(ev.stream), ev.ts)
    app.current = app.last_verified = release
    app.switching = None


_STEPS = {DeploySucceeded: _succeeded, RolledBack: _rolled_back}
FOLDED = frozenset({StepStarted, *_STEPS})  # the payload types fold_runtime reacts to
