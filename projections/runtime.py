"""Runtime status: per app, the last verified release and the releases kept to roll back to."""

from __future__ import annotations

import msgspec

from kuadeploy.events import DeploySucceeded, Envelope, RolledBack
from projections.deploys import deploy_id

# Enough history for any keep_releases (≤ 100); older releases are pruned by the pipeline.
MAX_RELEASES = 100


class Release(msgspec.Struct):
    sha: str
    image_id: str
    deploy: str
    ts: str


class AppRuntime(msgspec.Struct):
    current: Release | None = None
    # image id -> release, oldest first; a dict makes re-deploying an image O(1)
    releases: dict[str, Release] = {}


def newest_first(app: AppRuntime) -> list[Release]:
    return list(reversed(app.releases.values()))


class Runtime(msgspec.Struct):
    apps: dict[str, AppRuntime] = {}


def fold_runtime(state: Runtime, ev: Envelope) -> Runtime:
    step = _STEPS.get(type(ev.data))
    if step is not None:
        step(state.apps.setdefault(ev.data.app, AppRuntime()), ev)
    return state


def _succeeded(app: AppRuntime, ev: Envelope) -> None:
    data = ev.data
    release = Release(data.sha, data.image_id, deploy_id(ev.stream), ev.ts)
    app.current = release
    app.releases.pop(data.image_id, None)
    app.releases[data.image_id] = release
    if len(app.releases) > MAX_RELEASES:
        del app.releases[next(iter(app.releases))]


def _rolled_back(app: AppRuntime, ev: Envelope) -> None:
    data = ev.data
    if data.sha is None or data.image_id is None or not data.verified:
        app.current = None  # nothing verified is running: the app was left stopped
        return
    known = app.releases.get(data.image_id)
    app.current = known or Release(data.sha, data.image_id, deploy_id(ev.stream), ev.ts)


_STEPS = {DeploySucceeded: _succeeded, RolledBack: _rolled_back}
