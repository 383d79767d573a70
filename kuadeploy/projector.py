"""Live projections over the ledger: fold on commit, snapshot, load, rebuild, time travel.

The state is the fold of every event so far (projections/*). Snapshots of it are
caches stored beside the events, trusted only when the chain hash stored with
them still matches the ledger at their seq.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import msgspec

from kuadeploy import events
from kuadeploy.ledger import reading
from kuadeploy.ledger.store import Ledger, StoredEvent
from projections.deploys import FOLDED as DEPLOYS_FOLDS
from projections.deploys import Deploys, DeployView, fold_deploy, fold_deploys
from projections.pushes import FOLDED as PUSHES_FOLDS
from projections.pushes import Pushes, fold_pushes
from projections.registry import FOLDED as REGISTRY_FOLDS
from projections.registry import REGISTRY_EVENT_TYPES, Registry, fold_registry
from projections.runtime import FOLDED as RUNTIME_FOLDS
from projections.runtime import Runtime, fold_runtime

# Bump whenever a projection's state shape or fold changes: older snapshots are then
# ignored and the state is rebuilt from the events.
SNAPSHOT_FORMAT = 4
DEFAULT_SNAPSHOT_EVERY = 4096


class State(msgspec.Struct):
    seq: int = 0
    registry: Registry = msgspec.field(default_factory=Registry)
    deploys: Deploys = msgspec.field(default_factory=Deploys)
    runtime: Runtime = msgspec.field(default_factory=Runtime)
    pushes: Pushes = msgspec.field(default_factory=Pushes)


class _RegistryOnly(msgspec.Struct):
    seq: int
    registry: Registry


# Insertion order, not sorted: folds may rely on dict order (oldest release first),
# and the same events always insert in the same order, so bytes stay comparable.
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(State)
_registry_decoder = msgspec.msgpack.Decoder(_RegistryOnly)


# Payload types no projection folds (every type must be here or in some FOLDED; a test
# checks it, so a new event type is never silently skipped).
UNFOLDED = frozenset({events.LegacyRegistryImported, events.CheckpointOverridden})


def fold(state: State, ev: events.Envelope) -> State:
    # Only the projections that react to this payload type: most events are deploy
    # steps, and four calls that return at once cost ~7 % of a rebuild.
    kind = type(ev.data)
    if kind in DEPLOYS_FOLDS:
        fold_deploys(state.deploys, ev)
    if kind in RUNTIME_FOLDS:
        fold_runtime(state.runtime, ev)
    if kind in REGISTRY_FOLDS:
        fold_registry(state.registry, ev)
    if kind in PUSHES_FOLDS:
        fold_pushes(state.pushes, ev)
    state.seq = ev.seq
    return state


def encode_state(state: State) -> bytes:
    return _encoder.encode(state)


def decode_state(blob: bytes) -> State:
    return _decoder.decode(blob)


def fold_rows(state: State, conn: sqlite3.Connection, until: int | None = None) -> State:
    decode = events.decoder().decode
    until = reading.read_head(conn).seq if until is None else until
    for body in reading.iter_bodies(conn, state.seq, until):
        fold(state, decode(body))
    return state


def load_state(conn: sqlite3.Connection) -> State:
    """The newest usable snapshot plus the events after it."""
    state = State()
    for _seq, blob in reading.iter_snapshots(conn, SNAPSHOT_FORMAT):
        try:
            state = decode_state(blob)
        except msgspec.DecodeError:
            continue
        break
    return fold_rows(state, conn)


def rebuild_state(conn: sqlite3.Connection, on_seq: Callable[[State], None] | None = None) -> State:
    """Fold from event 1. `on_seq` sees the state after every event (for comparisons)."""
    state = State()
    if on_seq is None:
        return fold_rows(state, conn)
    decode = events.decoder().decode
    for body in reading.iter_bodies(conn, 0):
        fold(state, decode(body))
        on_seq(state)
    return state


async def read_deploy(ledger: Ledger, deploy_id: str) -> DeployView | None:
    """A deploy folded from its stream: also one that ended and is no longer kept live."""
    view = None
    for stored in await ledger.read_stream(f"deploy/{deploy_id}"):
        view = fold_deploy(view, stored.event)
    return view


def registry_at(conn: sqlite3.Connection, seq: int) -> Registry:
    """The registry as of `seq`: nearest snapshot at or below it, then registry events."""
    registry, start = Registry(), 0
    for snap_seq, blob in reading.iter_snapshots(conn, SNAPSHOT_FORMAT, at_most=seq):
        try:
            only = _registry_decoder.decode(blob)
        except msgspec.DecodeError:
            continue
        registry, start = only.registry, snap_seq
        break
    decode = events.decoder().decode
    for body in reading.iter_bodies(conn, start, seq, REGISTRY_EVENT_TYPES):
        fold_registry(registry, decode(body))
    return registry


class Projector:
    """Keeps `state` equal to the fold of every committed event."""

    def __init__(self, state: State, snapshot_every: int = DEFAULT_SNAPSHOT_EVERY):
        self.state = state
        self.snapshot_every = snapshot_every
        self._ledger: Ledger | None = None

    def attach(self, ledger: Ledger) -> None:
        if ledger.head.seq != self.state.seq:
            raise RuntimeError(
                f"projector at seq {self.state.seq} but ledger head is {ledger.head.seq}"
            )
        self._ledger = ledger
        ledger.subscribe(self.apply)

    def apply(self, committed: list[StoredEvent]) -> None:
        before = self.state.seq
        for stored in committed:
            fold(self.state, stored.event)
        every = self.snapshot_every
        if self._ledger is not None and every > 0 and self.state.seq // every > before // every:
            last = committed[-1]
            blob = encode_state(self.state)
            self._ledger.save_snapshot(last.seq, last.hash, SNAPSHOT_FORMAT, blob)
