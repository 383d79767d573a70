"""The ledger's Merkle tree (kuadeploy/audit/merkle.py) as a cache beside the events.

The leaves are the stored event bodies in seq order: leaf index = seq - 1, leaf
hash = SHA-256(0x00 || body). Like projection snapshots the nodes are a cache:
all of them can be recomputed from the bodies, and none is written in an event
commit (that stays one statement and one fsync). The writer keeps the compact
range (`TreeState`) in memory, advances it after each committed batch and
persists the completed nodes later, in batches.

Only perfect subtrees of level >= STORED_FROM_LEVEL (16 leaves and more) are
stored, in `merkle_nodes`. Storing every level would cost two rows per event on
the append path; a lower node is cheap to recompute instead, from at most 8
bodies read in one range. So the table holds 1/8 of a row per event.

Nodes are persisted in whole batches, in the order they complete, so after a
crash the table holds the stored nodes of some prefix [0, K) of the leaves with
K a multiple of 16. `load_tree` finds K, checks the last stored block against
its bodies, and recomputes the rest. A read that misses a stored node (a row
deleted by hand) recomputes it from its children: proofs stay right whatever
rows are lost.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from hashlib import sha256
from typing import Any

from kuadeploy.audit.merkle import NodeId, TreeState, node_hash, tree_state_at
from kuadeploy.ledger.reading import iter_bodies
from kuadeploy.ledger.schema import SchemaError

log = logging.getLogger(__name__)

STORED_FROM_LEVEL = 4
_BLOCK = 1 << STORED_FROM_LEVEL
_ROWS_PER_STATEMENT = 256  # 3 parameters a row, far below SQLite's variable limit
_REBUILD_CHUNK = 65536  # leaves per transaction when recomputing from the bodies

# (level, index) -> hash of a stored-level node not yet in the table.
PendingNodes = MutableMapping[tuple[int, int], bytes]


class NodeDigest:
    """Per stored level, SHA-256 over its nodes' hashes in index order: all the
    table `merkle_nodes` must hold, in a few bytes. A sink for `advance`, which
    completes the nodes of each level in index order; `stored_digests` gives the
    same from the table, so a start-up scan of the bodies can check every node,
    not only the peaks, at the cost of one pass over 1/8 of a row per event."""

    def __init__(self) -> None:
        self._levels: dict[int, Any] = {}

    def __setitem__(self, key: tuple[int, int], hash_: bytes) -> None:
        level = key[0]
        if level not in self._levels:
            self._levels[level] = sha256()
        self._levels[level].update(hash_)

    def digests(self) -> dict[int, bytes]:
        return {level: h.digest() for level, h in self._levels.items()}


def stored_digests(conn: sqlite3.Connection) -> dict[int, bytes]:
    """NodeDigest of the table's nodes (a missing row changes its level's digest)."""
    digest = NodeDigest()
    cur = conn.execute("SELECT level, idx, hash FROM merkle_nodes ORDER BY level, idx")
    while rows := cur.fetchmany(4096):
        for level, index, hash_ in rows:
            digest[level, index] = hash_
    return digest.digests()


def advance(
    state: TreeState, bodies: Iterable[bytes], pending: PendingNodes | NodeDigest | None = None
) -> TreeState:
    """The tree after appending the leaves of `bodies`; every completed node of a
    stored level goes into `pending`. TreeState.append, specialised for the commit
    path: no Node objects for the levels nobody stores."""
    size = state.size
    peaks = list(state.peaks)
    pop, push = peaks.pop, peaks.append
    for body in bodies:
        hash_ = sha256(b"\x00" + body).digest()
        index, level = size, 0
        # An odd index is a right child: merge with the left sibling (the last peak).
        while index & 1:
            hash_ = sha256(b"\x01" + pop() + hash_).digest()
            index >>= 1
            level += 1
            if pending is not None and level >= STORED_FROM_LEVEL:
                pending[(level, index)] = hash_
        push(hash_)
        size += 1
    return TreeState.trusted(size, tuple(peaks))


class LedgerNodes:
    """The tree's nodes over a ledger connection (a merkle.NodeSource): stored
    levels from `pending` (not yet flushed) or the table, lower ones from the
    bodies. With `repair`, a stored-level node missing from both is recomputed
    from its children; without, it is a KeyError (how `load_tree` finds gaps)."""

    _SELECT = "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?"

    def __init__(
        self,
        conn: sqlite3.Connection,
        pending: Mapping[tuple[int, int], bytes] | None = None,
        *,
        repair: bool = True,
    ) -> None:
        self.conn = conn
        self.pending = pending or {}
        self.repair = repair

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        return [self.node(level, index) for level, index in ids]

    def node(self, level: int, index: int) -> bytes:
        if level < STORED_FROM_LEVEL:
            return self.from_bodies(level, index)
        hash_ = self.pending.get((level, index))
        if hash_ is not None:
            return hash_
        row = self.conn.execute(self._SELECT, (level, index)).fetchone()
        if row is not None:
            return row[0]
        if not self.repair:
            raise KeyError(NodeId(level, index))
        return node_hash(self.node(level - 1, 2 * index), self.node(level - 1, 2 * index + 1))

    def from_bodies(self, level: int, index: int) -> bytes:
        """A node recomputed from its leaves' bodies."""
        start, count = index << level, 1 << level
        bodies = list(iter_bodies(self.conn, start, start + count))
        if len(bodies) != count:
            raise KeyError(NodeId(level, index))
        return advance(TreeState(), bodies).root()


def insert_nodes(conn: sqlite3.Connection, nodes: Sequence[tuple[tuple[int, int], bytes]]) -> float:
    """Persist `nodes` ((level, index), hash); returns the seconds it took.

    synchronous=NORMAL: in WAL mode that skips this commit's fsync, and the next
    event commit's fsync makes these pages durable with its own. A crash before
    that loses only cache rows, which the next open recomputes. OR IGNORE: a node
    never changes, so one that is there already (written by a backfill) is the same.
    """
    started = time.perf_counter()
    conn.execute("PRAGMA synchronous = NORMAL")
    try:
        if len(nodes) > _ROWS_PER_STATEMENT:
            conn.execute("BEGIN IMMEDIATE")
        try:
            for i in range(0, len(nodes), _ROWS_PER_STATEMENT):
                chunk = nodes[i : i + _ROWS_PER_STATEMENT]
                values = ",".join(["(?,?,?)"] * len(chunk))
                conn.execute(
                    f"INSERT OR IGNORE INTO merkle_nodes (level, idx, hash) VALUES {values}",
                    [v for (level, index), hash_ in chunk for v in (level, index, hash_)],
                )
            if conn.in_transaction:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute("PRAGMA synchronous = FULL")
    return time.perf_counter() - started


def load_tree(
    conn: sqlite3.Connection,
    size: int,
    *,
    expected: TreeState | None = None,
    expected_nodes: dict[int, bytes] | None = None,
    rebuild: bool = False,
) -> TreeState:
    """The tree of the first `size` events, after making the stored nodes whole:
    nodes beyond `size` are deleted, the missing tail is recomputed from the bodies,
    and the table is rebuilt from scratch when its last stored block disagrees with
    the bodies, when `expected` (the tree recomputed from the bodies, by the
    start-up check) or `expected_nodes` (that scan's NodeDigest) differs, or when
    `rebuild` says so. Writes on `conn`."""
    if not rebuild:
        try:
            return _load_and_backfill(conn, size, expected, expected_nodes)
        except _Stale as stale:
            log.warning("merkle node cache: %s; rebuilding it from the events", stale)
    conn.execute("DELETE FROM merkle_nodes")
    return _backfill(conn, TreeState(), size)


class _Stale(Exception):
    pass


def _load_and_backfill(
    conn: sqlite3.Connection,
    size: int,
    expected: TreeState | None,
    expected_nodes: dict[int, bytes] | None = None,
) -> TreeState:
    if _stored_beyond(conn, size):
        log.warning("merkle node cache: nodes beyond the %d events; deleting them", size)
        conn.execute("DELETE FROM merkle_nodes WHERE ((idx + 1) << level) > ?", (size,))
    row = conn.execute(
        "SELECT MAX(idx) FROM merkle_nodes WHERE level = ?", (STORED_FROM_LEVEL,)
    ).fetchone()
    covered = 0 if row[0] is None else (row[0] + 1) << STORED_FROM_LEVEL
    strict = LedgerNodes(conn, repair=False)
    try:
        state = tree_state_at(strict, covered)
    except KeyError as missing:
        raise _Stale(
            f"node {missing} of the stored prefix of {covered} leaves is missing"
        ) from None
    if covered:
        last = (STORED_FROM_LEVEL, (covered >> STORED_FROM_LEVEL) - 1)
        if strict.node(*last) != strict.from_bodies(*last):
            raise _Stale(f"the stored block ending at leaf {covered} differs from the events")
    state = _backfill(conn, state, size)
    if expected is not None and expected.size == size:
        if expected != state:
            raise _Stale("the stored nodes disagree with the tree of the event bodies")
        # A wrong interior node leaves the peaks alone, yet every proof through it
        # fails: an intact ledger would look rewritten to whoever checks one.
        if expected_nodes is not None and stored_digests(conn) != expected_nodes:
            raise _Stale("a stored node disagrees with the tree of the event bodies")
    return state


def _stored_beyond(conn: sqlite3.Connection, size: int) -> bool:
    """Whether any stored node covers a leaf at index >= size (one MAX lookup a level)."""
    for level in range(STORED_FROM_LEVEL, 64):
        (top,) = conn.execute(
            "SELECT MAX(idx) FROM merkle_nodes WHERE level = ?", (level,)
        ).fetchone()
        if top is not None and (top + 1) << level > size:
            return True
    return False


def _backfill(conn: sqlite3.Connection, state: TreeState, size: int) -> TreeState:
    """Append the leaves state.size..size-1 from the bodies, storing their nodes."""
    if state.size < size:
        log.info("merkle node cache: computing leaves %d..%d from the events", state.size, size)
    while state.size < size:
        pending: dict[tuple[int, int], bytes] = {}
        until = min(size, state.size + _REBUILD_CHUNK)
        state = advance(state, iter_bodies(conn, state.size, until), pending)
        if state.size != until:
            raise SchemaError(
                f"ledger has {state.size} events where seqs 1..{until} should be: a seq gap; "
                "its Merkle tree cannot be built (see kuadeploy audit verify)"
            )
        insert_nodes(conn, list(pending.items()))
    return state
