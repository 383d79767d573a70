"""Property tests: for random histories, live == rebuild, and time travel == prefix fold."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kuadeploy import events as ev
from kuadeploy.export import render_export
from kuadeploy.ledger import Ledger, NewEvent, reading
from kuadeploy.projector import (
    UNFOLDED,
    Projector,
    State,
    encode_state,
    load_state,
    rebuild_state,
    registry_at,
)
from projections.deploys import FOLDED as DEPLOYS_FOLDS
from projections.deploys import fold_deploys
from projections.pushes import FOLDED as PUSHES_FOLDS
from projections.pushes import fold_pushes
from projections.registry import FOLDED as REGISTRY_FOLDS
from projections.registry import fold_registry
from projections.runtime import FOLDED as RUNTIME_FOLDS
from projections.runtime import fold_runtime
from tests.support import entry

APPS = ["web", "api", "db"]
DEPLOYS = ["d1", "d2", "d3", "d4"]

registry_op = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(APPS), st.sampled_from(["main", "dev", "x"])),
    st.tuples(st.just("replace"), st.sampled_from(APPS), st.sampled_from(["main", "rel"])),
    st.tuples(st.just("patch"), st.sampled_from(APPS), st.integers(1, 9)),
    st.tuples(st.just("remove"), st.sampled_from(APPS)),
)
deploy_op = st.tuples(
    st.just("deploy"),
    st.sampled_from(DEPLOYS),
    st.sampled_from(APPS),
    st.sampled_from(
        [
            "request", "start", "step", "switch", "step_ok", "step_fail", "gate", "approve",
            "succeed", "fail", "rollback_start", "rolled_back", "rollback_failed", "cancel",
            "supersede", "interrupt",
        ]
    ),
)  # fmt: skip
histories = st.lists(
    st.lists(st.lists(st.one_of(registry_op, deploy_op), min_size=1, max_size=3), max_size=4),
    min_size=1,
    max_size=12,
)  # waves of concurrent appends, each append a batch of 1-3 events


def to_event(op: tuple, n: int) -> NewEvent:
    kind = op[0]
    if kind == "put":
        return NewEvent(f"app/{op[1]}", ev.AppRegistered(app=op[1], entry=entry(op[2])))
    if kind == "replace":  # the folds must not care whether the app existed
        return NewEvent(f"app/{op[1]}", ev.AppReplaced(app=op[1], entry=entry(op[2])))
    if kind == "patch":
        data = ev.AppPatched(app=op[1], entry=entry(keep_releases=op[2]), patch={"k": op[2]})
        return NewEvent(f"app/{op[1]}", data)
    if kind == "remove":
        return NewEvent(f"app/{op[1]}", ev.AppRemoved(app=op[1]))
    _, deploy, app, what = op
    sha = f"{n:040x}"
    data = {
        "request": ev.DeployRequested(app=app, trigger="api", sha=sha),
        "start": ev.DeployStarted(app=app, sha=sha),
        "step": ev.StepStarted(app=app, step="build"),
        "switch": ev.StepStarted(app=app, step="recreate"),
        "step_ok": ev.StepSucceeded(app=app, step="build", detail={"n": n}),
        "step_fail": ev.StepFailed(app=app, step="verify", error="bad"),
        "gate": ev.MigrationGateHeld(app=app, paths=["migrations/1"], expires_at="x"),
        "approve": ev.MigrationApproved(app=app),
        "succeed": ev.DeploySucceeded(app=app, sha=sha, image_id=f"sha256:{n % 3}"),
        "fail": ev.DeployFailed(app=app, reason="r"),
        "rollback_start": ev.RollbackStarted(app=app, sha=sha),
        "rolled_back": ev.RolledBack(app=app, sha=sha, image_id=f"sha256:{n % 3}", verified=True),
        "rollback_failed": ev.RolledBack(app=app, sha=sha, image_id=f"sha256:{n % 3}"),
        "cancel": ev.DeployCancelled(app=app),
        "supersede": ev.DeploySuperseded(app=app, by="d9"),
        "interrupt": ev.DeployInterrupted(app=app),
    }[what]
    return NewEvent(f"deploy/{deploy}", data)


async def play(path: str, waves: list, snapshot_every: int) -> State:
    led = await Ledger.open(path)
    projector = Projector(State(), snapshot_every=snapshot_every)
    projector.attach(led)
    n = 0
    for wave in waves:
        batches = []
        for batch in wave:
            batches.append([to_event(op, n := n + 1) for op in batch])
        await asyncio.gather(*(led.append(b, actor="prop") for b in batches))
    await led.close()
    return projector.state


def independent_registry_fold(bodies: list[bytes]) -> list[dict]:
    """The registry after each event, folded from raw JSON as a third party would."""
    apps: dict = {}
    out = []
    for body in bodies:
        doc = json.loads(body)
        if doc["type"] in ("AppRegistered", "AppReplaced", "AppPatched"):
            apps[doc["data"]["app"]] = doc["data"]["entry"]
        elif doc["type"] == "AppRemoved":
            apps.pop(doc["data"]["app"], None)
        out.append(dict(sorted(apps.items())))
    return out


def every_projection_sees_every_event(bodies: list[bytes]) -> State:
    """The reference for `fold`, which calls only the projections that react to an
    event's type: what it skips must not change any state."""
    state, decode = State(), ev.decoder().decode
    for body in bodies:
        event = decode(body)
        fold_registry(state.registry, event)
        fold_deploys(state.deploys, event)
        fold_runtime(state.runtime, event)
        fold_pushes(state.pushes, event)
        state.seq = event.seq
    return state


def test_every_event_type_is_folded_or_declared_unfolded():
    folded = DEPLOYS_FOLDS | RUNTIME_FOLDS | REGISTRY_FOLDS | PUSHES_FOLDS
    for payload in ev.EVENT_TYPES.values():
        assert (payload in folded) != (payload in UNFOLDED), payload


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(waves=histories, snapshot_every=st.integers(1, 6))
def test_rebuild_equals_live_and_point_in_time_equals_prefix_fold(waves, snapshot_every):
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "ledger.db")
        live = asyncio.run(play(path, waves, snapshot_every))
        conn = reading.open_readonly(path)
        try:
            assert encode_state(rebuild_state(conn)) == encode_state(live)
            assert encode_state(load_state(conn)) == encode_state(live)
            bodies = [body for *_, body, _h in reading.iter_rows(conn)]
            assert encode_state(every_projection_sees_every_event(bodies)) == encode_state(live)
            expected = independent_registry_fold(bodies)
            for seq in range(1, len(bodies) + 1):
                exported = render_export(registry_at(conn, seq), seq, None, b"")
                assert exported["apps"] == expected[seq - 1], f"at seq {seq}"
        finally:
            conn.close()


def test_an_unverified_rollback_fails_the_deploy_and_keeps_the_last_verified_release():
    from kuadeploy.projector import fold
    from projections.runtime import last_verified

    def envelope(seq: int, stream: str, data) -> ev.Envelope:
        ts = f"2026-01-01T00:00:{seq:02d}.000000Z"
        return ev.envelope(data, seq=seq, ts=ts, stream=stream, version=1, actor="t")

    a, b = "a" * 40, "b" * 40
    history = [
        ("deploy/d1", ev.DeployRequested(app="web", trigger="api")),
        ("deploy/d1", ev.DeploySucceeded(app="web", sha=a, image_id="sha256:a")),
        ("deploy/d2", ev.DeployRequested(app="web", trigger="api")),
        ("deploy/d2", ev.StepStarted(app="web", step="recreate")),
        ("deploy/d2", ev.RollbackStarted(app="web", sha=a, image_id="sha256:a")),
        ("deploy/d2", ev.RolledBack(app="web", sha=a, image_id="sha256:a", detail="failed")),
    ]  # fmt: skip
    state = State()
    for seq, (stream, data) in enumerate(history, 1):
        fold(state, envelope(seq, stream, data))
    view = state.deploys.views["d2"]
    assert (view.status, view.rolled_back_to, view.reason) == ("failed", None, "failed")
    runtime = state.runtime.apps["web"]
    assert runtime.current is None and runtime.switching == "d2"
    assert last_verified(runtime).sha == a  # what the next deploy restores
    fold(state, envelope(7, "deploy/d3", ev.DeploySucceeded(app="web", sha=b, image_id="sha256:b")))
    assert runtime.switching is None and last_verified(runtime).sha == b


def test_progress_follows_a_queued_deploy_that_starts_after_a_newer_recovery():
    """After a crash, start-up queues a recovery deploy that runs before the deploys
    queued earlier; those then run. `progress` (the app's latest deploy) stayed on the
    finished recovery while the older deploy ran and after it ended: "current or last
    deploy" showed neither."""
    from kuadeploy.projector import fold

    def envelope(seq: int, stream: str, data) -> ev.Envelope:
        ts = f"2026-01-01T00:00:{seq:02d}.000000Z"
        return ev.envelope(data, seq=seq, ts=ts, stream=stream, version=1, actor="t")

    a, b = "a" * 40, "b" * 40
    history = [
        ("deploy/queued", ev.DeployRequested(app="web", trigger="rollback", sha=b)),
        ("deploy/rescue", ev.DeployRequested(app="web", trigger="recovery", sha=a)),
        ("deploy/rescue", ev.DeployStarted(app="web", sha=a)),
        ("deploy/rescue", ev.DeploySucceeded(app="web", sha=a, image_id="sha256:a")),
        ("deploy/queued", ev.DeployStarted(app="web", sha=b)),
    ]  # fmt: skip
    state = State()
    for seq, (stream, data) in enumerate(history, 1):
        fold(state, envelope(seq, stream, data))
    assert state.deploys.latest["web"] == "queued"
    assert state.deploys.views["queued"].status == "running"
    assert "rescue" not in state.deploys.views  # finished and no longer latest
