"""Per-app history: every change to `app/<name>` with the entry before and after it."""

from __future__ import annotations

import msgspec

from kuadeploy.entry import AppEntry
from kuadeploy.events import AppPatched, AppRegistered, AppRemoved, AppReplaced, Envelope


class Change(msgspec.Struct):
    seq: int
    ts: str
    actor: str
    type: str
    version: int
    before: AppEntry | None
    after: AppEntry | None


def fold_history(changes: list[Change], ev: Envelope) -> list[Change]:
    data = ev.data
    if isinstance(data, AppRegistered | AppReplaced | AppPatched):
        after = data.entry
    elif isinstance(data, AppRemoved):
        after = None
    else:
        return changes
    before = changes[-1].after if changes else None
    changes.append(Change(ev.seq, ev.ts, ev.actor, ev.type, ev.version, before, after))
    return changes
