"""Runtime status: per app, the last verified release and the releases kept to roll back to."""

from __future__ import annotations

import msgspec

from kuadeploy.events import DeploySucceeded, Envelope, RolledBack

# Enough history for any keep_releases (≤ 100); older releases are pruned by the pipeline.
MAX_RELEASES = 100


class Release(msgspec.Struct):
    sha: str
    image_id: str
    deploy: str
    ts: str


class AppRuntime(msgspec.Struct):
    current: Release | None = None
    releases: list[Release] = []  # newest first, distinct images


class Runtime(msgspec.Struct):
    apps: dict[str, AppRuntime] = {}


def fold_runtime(state: Runtime, ev: Envelope) -> Runtime:
    data = ev.data
    if isinstance(data, DeploySucceeded):
        app = state.apps.setdefault(data.app, AppRuntime())
        release = Release(data.sha, data.image_id, deploy_id(ev.stream), ev.ts)
        app.current = release
        app.releases = [release, *(r for r in app.releases if r.image_id != data.image_id)][
            :MAX_RELEASES
        ]
    elif isinstance(data, RolledBack):
        app = state.apps.setdefault(data.app, AppRuntime())
        if data.sha is None or data.image_id is None or not data.verified:
            app.current = None  # nothing verified is running: the app was left stopped
        else:
            known = [r for r in app.releases if r.image_id == data.image_id]
            app.current = (
                known[0] if known else Release(data.sha, data.image_id, deploy_id(ev.stream), ev.ts)
            )
    return state


def deploy_id(stream: str) -> str:
    return stream.removeprefix("deploy/")
