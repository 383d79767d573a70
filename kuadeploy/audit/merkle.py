"""The RFC 6962 / RFC 9162 Merkle tree over the ledger: hashes, growth, proofs.

The leaves are the event bodies in seq order (leaf index = seq - 1).

Everything here that is stored or looked up is the root of a *perfect* subtree,
named by (level, index): it covers the 2**level leaves starting at
index * 2**level. Such a node is final the moment its last leaf exists, so it is
written once, as the tree grows (each appended leaf completes at most log2 n of
them), and read forever after. MTH (RFC 9162 §2.1.1) splits a tree at the largest
power of two below its size: a perfect left subtree and a smaller tree on the
right. Unrolled, the root of any size n, and every hash of an inclusion or
consistency proof, is a fold of at most log2 n + 1 perfect nodes, so a proof
costs O(log n) node lookups and never reads the leaves.

The functional core: hashing, proof planning, verification and the compact range
(`TreeState`) are pure; node lookups go through a `NodeSource`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import NamedTuple, Protocol

HASH_SIZE = 32

# RFC 9162 §2.1.1: the hash of an empty list is the hash of an empty string.
EMPTY_ROOT = sha256(b"").digest()

# RFC 9162 §2.1.1 (RFC 6962 §2.1): distinct prefixes for leaves and interior nodes,
# so that no leaf can pose as an interior node (second-preimage resistance).
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(body: bytes) -> bytes:
    """MTH({d(0)}) = HASH(0x00 || d(0)), RFC 9162 §2.1.1."""
    return sha256(_LEAF_PREFIX + body).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """HASH(0x01 || left || right), RFC 9162 §2.1.1."""
    return sha256(_NODE_PREFIX + left + right).digest()


class NodeId(NamedTuple):
    """A perfect subtree: leaves [index * 2**level, (index + 1) * 2**level)."""

    level: int
    index: int


class Node(NamedTuple):
    """A perfect subtree and its hash, as stored."""

    level: int
    index: int
    hash: bytes


class Subtree(NamedTuple):
    """Leaves [start, end) as one of MTH's recursive subtrees (RFC 9162 §2.1.1):
    `start` is a multiple of the smallest power of two >= end - start."""

    start: int
    end: int


class ProofError(ValueError):
    """A proof, or the hashes it is checked against, does not verify."""


class NodeSource(Protocol):
    """Where perfect-subtree hashes come from: memory in tests, SQLite in the ledger."""

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        """The hashes of `ids`, in order; KeyError for a node that is not held."""
        ...


# --- growth: the compact range ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeState:
    """The compact range [0, size): the roots of the perfect subtrees that cover it,
    largest (leftmost) first, one per set bit of `size`. O(log n) hashes, enough to
    give the root and to append without reading any earlier leaf.

    Immutable: `append` returns a new state, so a caller keeps the old one until the
    batch that produced the new one is committed.
    """

    size: int = 0
    peaks: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.peaks) != self.size.bit_count():
            raise ValueError(f"a tree of size {self.size} has {self.size.bit_count()} peaks")
        for peak in self.peaks:
            _check_hash("peak", peak, ValueError)

    @classmethod
    def trusted(cls, size: int, peaks: tuple[bytes, ...]) -> TreeState:
        """A state computed by our own append path: skip the checks of __post_init__,
        which would cost more than the hashing on every commit."""
        state = object.__new__(cls)
        object.__setattr__(state, "size", size)
        object.__setattr__(state, "peaks", peaks)
        return state

    def root(self) -> bytes:
        """MTH of the leaves [0, size) (RFC 9162 §2.1.1)."""
        if not self.peaks:
            return EMPTY_ROOT
        return _fold_right(self.peaks)

    def append(self, leaf_hashes: Iterable[bytes]) -> tuple[TreeState, list[Node]]:
        """The state after appending `leaf_hashes`, and every perfect-subtree node the
        appended leaves complete (the leaves themselves at level 0 included), in the
        order they complete: what a node store must persist for this batch."""
        size = self.size
        peaks = list(self.peaks)
        completed: list[Node] = []
        for hash_ in leaf_hashes:
            _check_hash("leaf hash", hash_, ValueError)
            level, index = 0, size
            completed.append(Node(level, index, hash_))
            # An odd index is a right child: its left sibling is complete and is the
            # last peak, so the two merge into their parent, and so on upwards.
            while index & 1:
                hash_ = node_hash(peaks.pop(), hash_)
                level, index = level + 1, index >> 1
                completed.append(Node(level, index, hash_))
            peaks.append(hash_)
            size += 1
        return TreeState(size, tuple(peaks)), completed


def tree_state_at(source: NodeSource, size: int) -> TreeState:
    """The compact range of an earlier (or the current) size from stored nodes:
    at most log2 n + 1 lookups."""
    if size < 0:
        raise ValueError(f"negative tree size {size}")
    return TreeState(size, tuple(source.get_nodes(subtree_node_ids(Subtree(0, size)))))


def root_at(source: NodeSource, size: int) -> bytes:
    """MTH of the first `size` leaves from stored nodes: at most log2 n + 1 lookups."""
    return tree_state_at(source, size).root()


# --- proof planning (pure) -------------------------------------------------------------


def _split_point(size: int) -> int:
    """The largest power of two smaller than `size` (>= 2): MTH's k, RFC 9162 §2.1.1."""
    return 1 << ((size - 1).bit_length() - 1)


def subtree_node_ids(subtree: Subtree) -> list[NodeId]:
    """The perfect subtrees whose right fold is MTH(D[start:end]), largest first.

    Repeating MTH's split on the right-hand remainder peels off one perfect subtree
    per set bit of end - start, biggest first.
    """
    start, end = subtree
    if not 0 <= start <= end:
        raise ValueError(f"bad subtree [{start}, {end})")
    ids = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start & ((1 << level) - 1):
            raise ValueError(f"[{subtree.start}, {end}) is not a subtree of an RFC 6962 tree")
        ids.append(NodeId(level, start >> level))
        start += 1 << level
    return ids


def inclusion_subtrees(index: int, size: int) -> list[Subtree]:
    """The subtrees whose hashes form the inclusion proof of leaf `index` in the tree
    of `size` leaves, in proof order (bottom up): PATH(m, D[n]) of RFC 9162 §2.1.3.1,
    unrolled top down and then reversed."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    start, end = 0, size
    siblings = []
    while end - start > 1:
        k = _split_point(end - start)
        if index < start + k:  # m < k: PATH(m, D[0:k]) : MTH(D[k:n])
            siblings.append(Subtree(start + k, end))
            end = start + k
        else:  # m >= k: PATH(m - k, D[k:n]) : MTH(D[0:k])
            siblings.append(Subtree(start, start + k))
            start += k
    siblings.reverse()
    return siblings


def consistency_subtrees(old_size: int, new_size: int) -> list[Subtree]:
    """The subtrees whose hashes form the consistency proof from `old_size` to
    `new_size`, in proof order: SUBPROOF(m, D[n], true) of RFC 9162 §2.1.4.1,
    unrolled top down and then reversed. Empty when old_size is 0 or new_size."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    start, end = 0, new_size
    old_root_known = True  # SUBPROOF's b: the verifier holds MTH(D[start:old_size])
    siblings = []
    while end != old_size:  # m < n in the current subtree
        k = _split_point(end - start)
        if old_size <= start + k:  # m <= k: SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            siblings.append(Subtree(start + k, end))
            end = start + k
        else:  # m > k: SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            siblings.append(Subtree(start, start + k))
            start += k
            old_root_known = False
    if not old_root_known:  # m = n and b is false: [MTH(D[m])]
        siblings.append(Subtree(start, end))
    siblings.reverse()
    return siblings


# --- proof generation -------------------------------------------------------------------


def subtree_hashes(source: NodeSource, subtrees: Sequence[Subtree]) -> list[bytes]:
    """MTH of each subtree, from one batch of node lookups."""
    ids_per_subtree = [subtree_node_ids(s) for s in subtrees]
    hashes = iter(source.get_nodes([i for ids in ids_per_subtree for i in ids]))
    return [_fold_right([next(hashes) for _ in ids]) for ids in ids_per_subtree]


def inclusion_proof(source: NodeSource, index: int, size: int) -> list[bytes]:
    """The RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of `size`."""
    return subtree_hashes(source, inclusion_subtrees(index, size))


def consistency_proof(source: NodeSource, old_size: int, new_size: int) -> list[bytes]:
    """The RFC 9162 §2.1.4.1 consistency proof from `old_size` to `new_size`."""
    return subtree_hashes(source, consistency_subtrees(old_size, new_size))


# --- verification (RFC 9162 §2.1.3.2, §2.1.4.2, step by step) ----------------------------


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root that `proof` yields for `leaf_hash` at `index` in a tree of `size`,
    by RFC 9162 §2.1.3.2; ProofError when the proof has the wrong shape."""
    _check_hash("leaf hash", leaf_hash)
    _check_proof_hashes(proof)
    if not 0 <= index < size:  # step 1
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn = index, size - 1  # step 2
    r = leaf_hash  # step 3
    for p in proof:  # step 4
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:  # step 5
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that `leaf_hash` is leaf `index` of the tree of `size` with `root`;
    raises ProofError when it is not proven."""
    _check_hash("root", root)
    if root_from_inclusion_proof(index, size, leaf_hash, proof) != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree (old_size, old_root) is a prefix of (new_size, new_root),
    by RFC 9162 §2.1.4.2; raises ProofError when it is not proven."""
    _check_hash("old root", old_root)
    _check_hash("new root", new_root)
    _check_proof_hashes(proof)
    if not 0 <= old_size <= new_size:
        raise ProofError(f"size {new_size} cannot extend size {old_size}")
    if old_size in (0, new_size):
        # Nothing to prove beyond the roots themselves; any hash here is an error.
        if proof:
            raise ProofError("consistency proof must be empty")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("the root of the empty tree is SHA-256 of the empty string")
        if old_size == new_size and old_root != new_root:
            raise ProofError("same size, different roots")
        return
    if not proof:  # step 1
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # step 2: first is a power of 2
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:  # step 7
        raise ProofError("consistency proof is too short")
    if fr != old_root:
        raise ProofError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("consistency proof does not lead to the new root")


# --- node sources -----------------------------------------------------------------------


class MemoryNodeStore:
    """Perfect-subtree nodes in a dict: for tests and offline recomputation."""

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self._hashes: dict[NodeId, bytes] = {}
        self.put_nodes(nodes)

    def put_nodes(self, nodes: Iterable[Node]) -> None:
        for level, index, hash_ in nodes:
            self._hashes[NodeId(level, index)] = hash_

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        return [self._hashes[NodeId(*i)] for i in ids]


class SqliteNodeStore:
    """Perfect-subtree nodes in the table `merkle_nodes` of a sqlite3 connection,
    which this class creates if missing.

    It never begins or ends a transaction: write a batch's nodes in the same
    transaction as the batch's events, so that both are on disk or neither.
    Primary-key lookups only, so reads stay O(log n) per proof at any size.
    """

    DDL = (
        "CREATE TABLE IF NOT EXISTS merkle_nodes ("
        " level INTEGER NOT NULL CHECK (level >= 0),"
        " idx   INTEGER NOT NULL CHECK (idx >= 0),"
        " hash  BLOB    NOT NULL CHECK (length(hash) = 32),"
        " PRIMARY KEY (level, idx)"
        ") WITHOUT ROWID"
    )
    _ROWS_PER_INSERT = 256  # 3 parameters a row, far below SQLite's variable limit
    _SELECT = "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute(self.DDL)

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        hashes = []
        for node_id in ids:
            row = self.conn.execute(self._SELECT, node_id).fetchone()
            if row is None:
                raise KeyError(node_id)
            hashes.append(row[0])
        return hashes

    def put_nodes(self, nodes: Sequence[Node]) -> None:
        """Insert new nodes. A node already stored is an IntegrityError, never an
        overwrite: a completed subtree does not change."""
        for i in range(0, len(nodes), self._ROWS_PER_INSERT):
            chunk = nodes[i : i + self._ROWS_PER_INSERT]
            values = ",".join(["(?,?,?)"] * len(chunk))
            self.conn.execute(
                f"INSERT INTO merkle_nodes (level, idx, hash) VALUES {values}",
                [v for node in chunk for v in node],
            )

    def leaf_count(self) -> int:
        """How many leaves are stored: the size of the tree the nodes describe."""
        row = self.conn.execute(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM merkle_nodes WHERE level = 0"
        ).fetchone()
        return int(row[0])

    def tree_state(self) -> TreeState:
        """The compact range of the whole stored tree, e.g. at start-up."""
        return tree_state_at(self, self.leaf_count())

    def truncate(self, size: int) -> None:
        """Delete every node that covers a leaf at index >= size: repair only, to
        rebuild the nodes after the ledger was cut back to `size` events."""
        if size < 0:
            raise ValueError(f"negative tree size {size}")
        self.conn.execute("DELETE FROM merkle_nodes WHERE ((idx + 1) << level) > ?", (size,))


# --- helpers ---------------------------------------------------------------------------


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    """node_hash(h0, node_hash(h1, … node_hash(h[k-2], h[k-1]))): MTH splits the
    largest perfect subtree off the left, so the remainder on the right is hashed
    first."""
    root = hashes[-1]
    for hash_ in reversed(hashes[:-1]):
        root = node_hash(hash_, root)
    return root


def _check_hash(what: str, value: bytes, error: type[ValueError] = ProofError) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise error(f"{what} must be {HASH_SIZE} bytes")


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for i, hash_ in enumerate(proof):
        _check_hash(f"proof hash {i}", hash_)
