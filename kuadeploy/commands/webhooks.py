"""What a verified webhook delivery does: pure decisions over the live projections.

Every verified delivery becomes exactly one event in `webhook/<delivery>`, appended
together with the deploy requests it causes (one atomic append), so the ledger never
holds a delivery without its deploys or a webhook deploy without its delivery. The
event carries the answer given, so a repeated delivery UUID gets the same answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from kuadeploy import events as ev
from kuadeploy.commands import deploys as dep
from kuadeploy.entry import AppEntry
from kuadeploy.forge.match import apps_of_repo, branch_of
from kuadeploy.forge.payload import OtherPayload, PushPayload, is_zero
from kuadeploy.ledger import NewEvent
from kuadeploy.projector import State
from projections.pushes import superseded_by
from projections.registry import Registry, live_entries

TRIGGER = "webhook"


class Delivery(msgspec.Struct, frozen=True):
    """A delivery whose signature verified."""

    id: str
    event: str
    forge: str  # forgejo | gitea
    signed_with: str  # repo | default
    payload: PushPayload | OtherPayload

    @property
    def repo(self) -> str | None:
        repository = self.payload.repository
        return repository.full_name if repository is not None else None

    @property
    def actor(self) -> str:
        return f"webhook:{self.repo or 'unknown'}"

    @property
    def stream(self) -> str:
        return f"webhook/{self.id}"


class Answer(msgspec.Struct, frozen=True):
    deploy_ids: list[str]
    ignored: list[ev.WebhookSkip]

    @property
    def status(self) -> int:
        return 202 if self.deploy_ids else 200

    def body(self) -> dict[str, Any]:
        skips = [{k: v for k, v in msgspec.structs.asdict(s).items() if v is not None}
                 for s in self.ignored]  # fmt: skip
        if not self.deploy_ids:  # DESIGN §4: 200 with only `ignored`
            return {"ignored": skips}
        return {"deploy_ids": self.deploy_ids, "ignored": skips}


class Decision(msgspec.Struct, frozen=True):
    events: list[NewEvent]
    answer: Answer


def answer_of(data: ev.WebhookDelivery) -> Answer:
    """The answer recorded with a delivery: what a repeat of its UUID gets."""
    return Answer(list(data.deploy_ids), list(data.ignored))


def apps_to_deploy(payload: PushPayload | OtherPayload, registry: Registry) -> list[str]:
    """Apps a delivery may request a deploy for, sorted (the order their locks are taken)."""
    if not isinstance(payload, PushPayload) or _push_skip(payload):
        return []
    return _on_branch(_apps_of(payload, registry), branch_of(payload.ref))


def _apps_of(payload: PushPayload, registry: Registry) -> dict[str, AppEntry]:
    return apps_of_repo(live_entries(registry), payload.repository)


def _on_branch(apps: dict[str, AppEntry], branch: str | None) -> list[str]:
    return [name for name, entry in apps.items() if entry.branch == branch]


def decide_delivery(d: Delivery, state: State, new_id: Callable[[], str]) -> Decision:
    payload = d.payload
    skips: list[ev.WebhookSkip] = []
    deploy_ids: list[str] = []
    requests: list[NewEvent] = []
    if isinstance(payload, PushPayload):
        of_repo = {} if _push_skip(payload) else _apps_of(payload, state.registry)
        skips = _push_skips(payload, of_repo)
        test = payload.before == payload.after  # the forge's "Test delivery" button
        older = _older(payload, state)
        for app in _on_branch(of_repo, branch_of(payload.ref)):
            if older is not None:
                skips.append(ev.WebhookSkip(older, app))
                continue
            requested = dep.decide_request(
                app,
                state.registry,
                state.deploys,
                state.runtime,
                deploy_id=new_id(),
                trigger=TRIGGER,
                sha=payload.after.lower(),
                ref=branch_of(payload.ref),
                delivery=d.id,
                pusher=payload.who,
            )
            if requested.noop:
                reason = f"test delivery: {requested.reason}" if test else requested.reason
                skips.append(ev.WebhookSkip(reason or "", app, requested.deploy_id))
            else:
                deploy_ids.append(requested.deploy_id)
                requests.extend(requested.events)
    else:
        skips = [ev.WebhookSkip(_other_reason(d.event, payload))]
    kind = ev.WebhookReceived if deploy_ids else ev.WebhookIgnored
    push = payload if isinstance(payload, PushPayload) else None
    data = kind(
        delivery=d.id,
        event=d.event,
        forge=d.forge,
        signed_with=d.signed_with,
        repo=d.repo,
        ref=payload.ref,
        before=push.before.lower() if push else None,
        after=push.after.lower() if push else None,
        pusher=push.who if push else None,
        deploy_ids=deploy_ids,
        ignored=skips,
    )
    # expected version 0: a delivery UUID seen before is a conflict, never a second record
    record = NewEvent(d.stream, data, 0)
    return Decision([record, *requests], Answer(deploy_ids, skips))


def _push_skip(p: PushPayload) -> str | None:
    """Why a push deploys nothing at all, whatever the registry says."""
    branch = branch_of(p.ref)
    if branch is None:
        what = "tag push" if p.ref.startswith("refs/tags/") else "push"
        return f"{what} {p.ref}: only branch pushes deploy"
    if is_zero(p.after) and p.before == p.after:
        return "test delivery of an empty repository: no commit to deploy"
    if is_zero(p.after):
        return f"branch {branch} was deleted: nothing to deploy"
    return None


def _older(p: PushPayload, state: State) -> str | None:
    """Why a push is late or replayed: a recorded push has already moved its branch on
    from `after`. Deploying it would put an older commit over a newer one."""
    after = p.after.lower()
    newer = superseded_by(state.pushes, p.repository.full_name, p.ref, p.before.lower(), after)
    if newer is None:
        return None
    return f"{after} is older than a push already received (the branch went on to {newer})"


def _push_skips(p: PushPayload, of_repo: dict[str, AppEntry]) -> list[ev.WebhookSkip]:
    """Ignored entries of a push before any deploy is decided: the whole push, or each
    app of this repository that tracks another branch."""
    why = _push_skip(p)
    if why is not None:
        return [ev.WebhookSkip(why)]
    branch = branch_of(p.ref)
    if not of_repo:
        return [ev.WebhookSkip(f"repository {p.repository.full_name} is not tracked by any app")]
    return [
        ev.WebhookSkip(f"tracks branch {entry.branch}, not {branch}", name)
        for name, entry in of_repo.items()
        if entry.branch != branch
    ]


def _other_reason(event: str, p: OtherPayload) -> str:
    if event == "delete":
        return f"delete event ({p.ref_type or 'ref'} {p.ref}): deletions never deploy"
    if event == "create":
        return f"create event ({p.ref_type or 'ref'} {p.ref}): deploys come from push events"
    return f"{event} event: only push events deploy"
