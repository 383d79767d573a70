"""What a registry mirror writes for each registry event. Pure: no I/O, no clock.

Each registry event becomes one commit holding the exported registry as of that
event's seq, so the mirror's history reproduces the registry at every change.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import NamedTuple

import msgspec

from kuadeploy.events import Envelope, LegacyRegistryImported
from kuadeploy.export import render_export
from kuadeploy.ledger.store import StoredEvent
from projections.registry import REGISTRY_EVENT_TYPES, Registry, fold_registry

SINK_EVENT_TYPES = (*REGISTRY_EVENT_TYPES, "LegacyRegistryImported")
_SEQ = re.compile(r"^Kua-Seq: (\d+)$", re.MULTILINE)
_HASH = re.compile(r"^Kua-Hash: ([0-9a-f]{64})$", re.MULTILINE)


class Step(NamedTuple):
    """One registry event, mirrored: the registry after it and how to record it."""

    seq: int
    registry: Registry
    document: bytes  # registry.json
    message: str
    actor: str
    when: int  # the event's time, unix seconds


class Marker(NamedTuple):
    """The position a mirror commit records: its ledger seq and the chain hash there."""

    seq: int
    hash: str


def advance(registry: Registry, stored: StoredEvent) -> Step:
    """The step for `stored`, from the registry just before it (left untouched)."""
    ev = stored.event
    # Folds replace AppState values and never mutate them: a shallow copy suffices.
    after = fold_registry(Registry(apps=dict(registry.apps)), ev)
    doc = render_export(after, ev.seq, ev.ts, stored.hash)
    return Step(ev.seq, after, document(doc), commit_message(ev, stored.hash), ev.actor, _unix(ev))


def document(doc: dict) -> bytes:
    """Pretty JSON with a final newline: readable in `git diff`."""
    return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"


def describe(ev: Envelope) -> str:
    data = ev.data
    if isinstance(data, LegacyRegistryImported):
        return f"{ev.type} {data.path} ({len(data.apps)} apps)"
    return f"{ev.type} {data.app}"


def commit_message(ev: Envelope, hash_: bytes) -> str:
    actor, change = one_line(ev.actor), one_line(describe(ev))
    return (
        f"{actor}: {change} (seq {ev.seq})\n\n"
        f"Kua-Actor: {actor}\n"
        f"Kua-Change: {change}\n"
        f"Kua-Time: {ev.ts}\n"
        f"Kua-Seq: {ev.seq}\n"
        f"Kua-Hash: {hash_.hex()}\n"
    )


def parse_marker(message: str) -> Marker | None:
    """The seq and hash trailers of a mirror commit; None for any other commit."""
    seq, hash_ = _SEQ.search(message), _HASH.search(message)
    if seq is None or hash_ is None:
        return None
    return Marker(int(seq.group(1)), hash_.group(1))


def one_line(text: str) -> str:
    return " ".join(text.split())


def _unix(ev: Envelope) -> int:
    return int(datetime.fromisoformat(ev.ts.replace("Z", "+00:00")).timestamp())
