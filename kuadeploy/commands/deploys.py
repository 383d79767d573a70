"""Deploy commands: request (with coalescing), cancel, approve, roll back.

Pure decisions over the live projections; the events they return are appended
with expected stream versions, so a decision made on a stale view fails and is
made again.
"""

from __future__ import annotations

import re
import secrets
import time

import msgspec

from kuadeploy import events as ev
from kuadeploy.errors import ApiError
from kuadeploy.ledger import NewEvent
from kuadeploy.validation import check_branch
from projections.deploys import ACTIVE, Deploys, DeployView, active_deploys
from projections.registry import Registry
from projections.runtime import Runtime, last_verified, newest_first

SHA = re.compile(r"^[0-9a-f]{4,64}$")
_INVALID = "Invalid request"  # a deploy request, not a registry entry


class DeployRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of POST /api/v1/apps/{app}/deploy."""

    sha: str | None = None
    ref: str | None = None
    force: bool = False


class RollbackRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    to: str | None = None


class Requested(msgspec.Struct):
    deploy_id: str
    noop: bool = False
    reason: str | None = None
    superseded: list[str] = []
    events: list[NewEvent] = []


def new_deploy_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _stream(deploy_id: str) -> str:
    return f"deploy/{deploy_id}"


def decide_request(
    app: str,
    registry: Registry,
    deploys: Deploys,
    runtime: Runtime,
    *,
    deploy_id: str,
    trigger: str,
    sha: str | None = None,
    ref: str | None = None,
    force: bool = False,
    image_id: str | None = None,
    delivery: str | None = None,
    pusher: str | None = None,
) -> Requested:
    """Queue a deploy of `sha` (None: the branch head at fetch time).

    A SHA that the app is already heading to — queued, running, or the verified
    release with nothing in flight — is a no-op unless `force`. Every deploy still
    queued (not yet running) is superseded by the new one: the latest request wins.
    """
    current = registry.apps.get(app)
    if current is None or current.entry is None:
        raise ApiError.not_found(f"app {app!r} is not registered")
    if sha is not None:
        sha = sha.lower()
        if not SHA.fullmatch(sha):
            raise ApiError.invalid_one("$.sha", "sha must be 4 to 64 hex digits", _INVALID)
    if ref is not None and (problem := check_branch(ref)) is not None:
        raise ApiError.invalid_one("$.ref", problem, _INVALID)
    in_flight = active_deploys(deploys, app)
    if sha is not None and not force:
        heading = _heading_to(in_flight, runtime, app)
        if heading is not None and _same(heading[0], sha):
            return Requested(heading[1], noop=True, reason=f"{sha} is already {heading[2]}")
    data = ev.DeployRequested(
        app=app,
        trigger=trigger,
        sha=sha,
        ref=ref,
        force=force,
        image_id=image_id,
        delivery=delivery,
        pusher=pusher,
    )
    items = [NewEvent(_stream(deploy_id), data, 0)]
    superseded = []
    for view in in_flight:
        if view.status == "queued":
            superseded.append(view.id)
            items.append(
                NewEvent(
                    _stream(view.id),
                    ev.DeploySuperseded(app=app, by=deploy_id),
                    len(view.events),
                )
            )
    return Requested(deploy_id, superseded=superseded, events=items)


def _heading_to(
    in_flight: list[DeployView], runtime: Runtime, app: str
) -> tuple[str, str, str] | None:
    """(sha, deploy id, how) the app will end up at, when that is known."""
    if in_flight:
        newest = in_flight[-1]  # a request for the branch head: unknown until fetched
        return (newest.sha, newest.id, newest.status) if newest.sha else None
    state = runtime.apps.get(app)
    if state is not None and state.current is not None:
        return state.current.sha, state.current.deploy, "the verified release"
    return None


def _same(full: str, given: str) -> bool:
    return full.startswith(given) or given.startswith(full)


def decide_cancel(view: DeployView | None, deploy_id: str) -> list[NewEvent]:
    """Events to append now: only a queued deploy is cancelled by the command itself;
    a running one is stopped by its runner, which records the cancellation — this is
    asked only when no runner of ours runs it, so there is nothing to stop."""
    if view is None:
        raise ApiError.not_found(f"deploy {deploy_id!r} not found")
    if view.status not in ACTIVE:
        raise ApiError.conflict(f"deploy {deploy_id} already ended ({view.status})")
    if view.status != "queued":
        raise ApiError.conflict(
            f"deploy {deploy_id} is {view.status} but not run here; it ends on its own"
        )
    data = ev.DeployCancelled(app=view.app, reason="cancelled before it started")
    return [NewEvent(_stream(deploy_id), data, len(view.events))]


def decide_approve(view: DeployView | None, deploy_id: str) -> list[NewEvent]:
    if view is None:
        raise ApiError.not_found(f"deploy {deploy_id!r} not found")
    if view.status != "awaiting_approval":
        raise ApiError.conflict(f"deploy {deploy_id} is {view.status}, not awaiting approval")
    return [NewEvent(_stream(deploy_id), ev.MigrationApproved(app=view.app), len(view.events))]


def decide_rollback(app: str, runtime: Runtime, to: str | None, keep: int) -> tuple[str, str]:
    """(sha, image id) of the retained release to go back to: `to`, or the one
    verified before the current release — or, when nothing verified runs (a rollback
    failed), the last verified one. Only the newest `keep` releases still have their
    images (older ones are pruned after each success)."""
    state = runtime.apps.get(app)
    releases = newest_first(state)[:keep] if state is not None else []
    if to is not None:
        to = to.lower()
        if not SHA.fullmatch(to):  # "" would match every release: the newest, the current
            raise ApiError.invalid_one("$.to", "to must be 4 to 64 hex digits", _INVALID)
        matches = [release for release in releases if _same(release.sha, to)]
        if len({release.sha for release in matches}) > 1:
            shas = ", ".join(sorted({release.sha[:12] for release in matches}))
            raise ApiError.conflict(f"{to} matches several retained releases of {app}: {shas}")
        if matches:  # the same SHA built again: its newest image
            return matches[0].sha, matches[0].image_id
        raise ApiError.not_found(f"no retained release of {app} matches {to}")
    current = state.current if state is not None else None
    last = last_verified(state)
    if current is None and last is not None and last.image_id in {r.image_id for r in releases}:
        return last.sha, last.image_id
    for release in releases:
        if current is None or release.image_id != current.image_id:
            return release.sha, release.image_id
    raise ApiError.conflict(f"{app} has no earlier verified release to roll back to")
