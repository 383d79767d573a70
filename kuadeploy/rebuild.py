"""`kuadeploy rebuild`: fold from event 1 and compare with every snapshot and the live load."""

from __future__ import annotations

import sqlite3

import msgspec

from kuadeploy import events
from kuadeploy.ledger import reading
from kuadeploy.progress import Progress
from kuadeploy.projector import SNAPSHOT_FORMAT, State, encode_state, fold, load_state


class RebuildReport(msgspec.Struct):
    events: int
    snapshots_checked: int
    differences: list[str]

    @property
    def ok(self) -> bool:
        return not self.differences


def rebuild_and_compare(
    conn: sqlite3.Connection, progress: Progress | None = None
) -> tuple[State, RebuildReport]:
    snaps = conn.execute(
        "SELECT s.seq, s.hash, s.state, e.hash FROM snapshots s LEFT JOIN events e "
        "ON e.seq = s.seq WHERE s.format = ? ORDER BY s.seq",
        (SNAPSHOT_FORMAT,),
    ).fetchall()
    differences: list[str] = []
    pending = iter(snaps)
    nxt = next(pending, None)
    state, decode, n = State(), events.decoder().decode, 0
    bodies = reading.iter_bodies(conn, 0)  # the seq is in each body: fetch nothing else
    if progress is not None:
        progress.total = reading.read_head(conn).seq
        bodies = progress.counted(bodies)
    for body in bodies:
        fold(state, decode(body))
        n += 1
        while nxt is not None and nxt[0] <= state.seq:
            differences.extend(_compare_snapshot(state, *nxt))
            nxt = next(pending, None)
    for snap in [nxt, *pending] if nxt is not None else []:
        differences.append(f"snapshot at seq {snap[0]} is beyond the ledger head ({state.seq})")
    if encode_state(load_state(conn)) != encode_state(state):
        differences.append("live state (snapshot + tail) differs from the rebuild")
    return state, RebuildReport(n, len(snaps), differences)


def _compare_snapshot(
    state: State, seq: int, snap_hash: bytes, blob: bytes, chain_hash: bytes | None
) -> list[str]:
    if snap_hash != chain_hash:
        return [f"snapshot at seq {seq} was taken on another chain (hash differs)"]
    if blob != encode_state(state):
        return [f"snapshot at seq {seq} differs from the rebuilt state"]
    return []
