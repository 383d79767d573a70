"""Branch pushes as the forge announced them, to recognise a late or replayed one.

Per repository and branch: the `after` of the newest push that reached a tracked app,
and the `before`s of the last PUSH_MEMORY such pushes. A push whose `after` is one of
those `before`s is older than a push already seen — unless its own `before` is the
newest `after` (a force-push back to an earlier commit is new, not late).
"""

from __future__ import annotations

import msgspec

from kuadeploy.events import Envelope, WebhookDelivery, WebhookIgnored, WebhookReceived
from kuadeploy.forge.payload import is_zero

# Enough to catch any realistic reordering or replay; older ones are left to the
# pipeline, which deploys the branch head a push leads to anyway.
PUSH_MEMORY = 64


class BranchPushes(msgspec.Struct):
    head: str  # `after` of the newest push
    befores: list[str] = []  # oldest first, at most PUSH_MEMORY


class Pushes(msgspec.Struct):
    branches: dict[str, BranchPushes] = {}  # branch_key(repo, ref) -> its pushes


def branch_key(repo: str, ref: str) -> str:
    return f"{repo.lower()}:{ref}"  # a ref cannot contain ':' (git check-ref-format)


def superseded_by(state: Pushes, repo: str, ref: str, before: str, after: str) -> str | None:
    """The newest pushed commit when the push before→after is known to be older."""
    seen = state.branches.get(branch_key(repo, ref))
    if seen is None or after not in seen.befores or before == seen.head:
        return None
    return seen.head


FOLDED = frozenset({WebhookReceived, WebhookIgnored})  # the payload types fold_pushes reads


def fold_pushes(state: Pushes, ev: Envelope) -> Pushes:
    d = ev.data
    if not isinstance(d, WebhookDelivery) or d.event != "push":
        return state
    if d.repo is None or d.ref is None or d.before is None or d.after is None:
        return state
    if is_zero(d.before) or is_zero(d.after) or d.before == d.after:
        return state  # a new branch, a deletion, a test delivery: no order to learn
    # Only pushes that reached an app of this branch (deployed or already covered):
    # not untracked branches, not pushes refused as older.
    if not d.deploy_ids and not any(s.deploy_id for s in d.ignored):
        return state
    key = branch_key(d.repo, d.ref)
    seen = state.branches.get(key)
    if seen is None:
        state.branches[key] = BranchPushes(d.after, [d.before])
        return state
    seen.head = d.after
    if d.before not in seen.befores:
        seen.befores.append(d.before)
        del seen.befores[:-PUSH_MEMORY]
    return state
