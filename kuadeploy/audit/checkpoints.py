"""Checkpoints and proofs as the API serves them, and a ledger file checked against one.

Server side, for the routes of DESIGN §4 (each returns the exact response body):

- `checkpoint_text(checkpointer)`: GET /api/v1/audit/checkpoint, text/plain;
- `inclusion_from_query(ledger, checkpointer, query)`: GET /api/v1/audit/proof/inclusion
  `{"seq","leaf_index","tree_size","root","hashes":[hex…]}`;
- `consistency_from_query(ledger, checkpointer, query)`: GET /api/v1/audit/proof/consistency
  `{"from","to","hashes":[hex…]}`.

`size` and `to` default to the latest signed checkpoint's size, so a client can
check a proof against the checkpoint it fetched. A request outside the tree is a
ProofRequestError (HTTP 400, its message as the detail).

Verifier side: `scan_ledger` recomputes roots from the stored bodies (never from
stored nodes) and `checkpoint_problem` words what is wrong; the offline verifier
and the start-up check both use them.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from hashlib import sha256
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from kuadeploy.audit.merkle import (
    NodeSource,
    TreeState,
    consistency_proof,
    inclusion_proof,
    root_at,
)
from kuadeploy.ledger.chain import GENESIS_HASH, column_problem, not_a_blob
from kuadeploy.ledger.processes import file_of, process_pool
from kuadeploy.ledger.reading import iter_bodies, open_readonly, read_head
from kuadeploy.ledger.tree import NodeDigest, advance

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from kuadeploy.audit.checkpointer import Checkpointer
    from kuadeploy.ledger.store import Ledger


class ProofRequestError(ValueError):
    """A proof or checkpoint request that cannot be answered: HTTP 400."""


class SignedCheckpoint(NamedTuple):
    size: int
    root: bytes
    note: str  # the C2SP signed note, as served and mirrored


# --- server side ------------------------------------------------------------------------


def checkpoint_text(checkpointer: Checkpointer) -> str:
    """The latest signed checkpoint note (there is one from start-up on)."""
    latest = checkpointer.latest
    if latest is None:
        raise ProofRequestError("no checkpoint has been signed yet")
    return latest.note


async def inclusion(ledger: Ledger, seq: int, size: int) -> dict[str, Any]:
    """The inclusion proof of event `seq` (leaf seq - 1) in the tree of `size`."""
    _check_size(ledger, size)
    if not 1 <= seq <= size:
        raise ProofRequestError(f"seq {seq} is not in the tree of size {size}")
    hashes, root = await ledger.read_tree(_inclusion, seq - 1, size)
    return {
        "seq": seq,
        "leaf_index": seq - 1,
        "tree_size": size,
        "root": root.hex(),
        "hashes": [h.hex() for h in hashes],
    }


async def consistency(ledger: Ledger, first: int, second: int) -> dict[str, Any]:
    """The consistency proof between the trees of sizes `first` <= `second`."""
    _check_size(ledger, second)
    if not 0 <= first <= second:
        raise ProofRequestError(f"no consistency proof from size {first} to {second}")
    hashes = await ledger.read_tree(consistency_proof, first, second)
    return {"from": first, "to": second, "hashes": [h.hex() for h in hashes]}


async def root(ledger: Ledger, size: int) -> bytes:
    """The tree's root at `size`, from the node cache."""
    _check_size(ledger, size)
    return await ledger.read_tree(root_at, size)


async def inclusion_from_query(
    ledger: Ledger, checkpointer: Checkpointer, query: Mapping[str, str]
) -> dict[str, Any]:
    seq = query_int(query, "seq")
    size = query_int(query, "size", _latest_size(checkpointer))
    return await inclusion(ledger, seq, size)


async def consistency_from_query(
    ledger: Ledger, checkpointer: Checkpointer, query: Mapping[str, str]
) -> dict[str, Any]:
    first = query_int(query, "from")
    second = query_int(query, "to", _latest_size(checkpointer))
    return await consistency(ledger, first, second)


def query_int(query: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ProofRequestError(f"query parameter {name!r} is required")
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise ProofRequestError(f"query parameter {name!r} must be a non-negative integer")
    return int(raw)


def _latest_size(checkpointer: Checkpointer) -> int | None:
    return None if checkpointer.latest is None else checkpointer.latest.size


def _check_size(ledger: Ledger, size: int) -> None:
    head = ledger.tree.size
    if size > head:
        raise ProofRequestError(f"tree size {size} is beyond the ledger's {head} events")


def _inclusion(nodes: NodeSource, index: int, size: int) -> tuple[list[bytes], bytes]:
    return inclusion_proof(nodes, index, size), root_at(nodes, size)


# --- verifier side ----------------------------------------------------------------------


MAX_CHAIN_BREAKS = 1000


class ChainBreak(NamedTuple):
    seq: int
    # "row missing", "hash mismatch", or a type or ts column that differs from the
    # body (unhashed, yet point-in-time reads select by them)
    reason: str

    def __str__(self) -> str:
        return f"ledger chain broken at seq {self.seq}: {self.reason}"


class LedgerScan(NamedTuple):
    roots: dict[int, bytes]  # size -> root, for the sizes asked that the ledger reaches
    tree: TreeState  # the whole tree
    chain_breaks: list[ChainBreak]  # those not accepted, in seq order, when checked


def scan_ledger(
    conn: sqlite3.Connection,
    sizes: Iterable[int],
    *,
    check_chain: bool = False,
    accepted_breaks: Collection[int] = (),
    nodes: NodeDigest | None = None,
) -> LedgerScan:
    """In one pass over the stored rows in seq order: the root at each of `sizes`
    recomputed from the bodies (never from stored nodes), the whole tree, and with
    `check_chain` every seq gap, chain hash mismatch (DESIGN §3) and type or ts
    column that differs from the body, but those at `accepted_breaks` (one per
    row: the first found), up to MAX_CHAIN_BREAKS. Leaf i is the i-th
    body read, so a missing row shifts every later leaf and changes the roots.
    `nodes`, when given, takes in every node of the stored levels."""
    breaks: list[ChainBreak] = []
    accepted = frozenset(accepted_breaks)
    path = file_of(conn)
    if check_chain and path and read_head(conn).seq >= PARALLEL_SCAN_ROWS:
        try:  # two passes at once: the chain in a helper process, the tree here
            with process_pool(1) as pool:
                chain = pool.submit(chain_breaks, path, accepted)
                roots, state = _tree(iter_bodies(conn, 0), sizes, nodes)
                return LedgerScan(roots, state, chain.result())
        except (OSError, BrokenProcessPool):  # no helper to be had: one pass here
            log.warning("scanning the ledger in one process: the helper failed", exc_info=True)
    bodies = _checked_bodies(conn, breaks, accepted) if check_chain else iter_bodies(conn, 0)
    roots, state = _tree(bodies, sizes, nodes)
    return LedgerScan(roots, state, breaks)


# Rows from which the start-up scan checks the chain in a second process.
PARALLEL_SCAN_ROWS = 200_000


def _tree(
    bodies: Iterator[bytes], sizes: Iterable[int], nodes: NodeDigest | None = None
) -> tuple[dict[int, bytes], TreeState]:
    state = TreeState()
    roots: dict[int, bytes] = {}
    for size in sorted(set(sizes)):
        state = advance(state, islice(bodies, size - state.size), nodes)
        if state.size < size:
            break
        roots[size] = state.root()
    return roots, advance(state, bodies, nodes)


def chain_breaks(path: str, accepted: frozenset[int]) -> list[ChainBreak]:
    """The chain breaks of the ledger at `path`, as `scan_ledger` finds them."""
    breaks: list[ChainBreak] = []
    with closing(open_readonly(path)) as conn:
        for _ in _checked_bodies(conn, breaks, accepted):
            pass
    return breaks


def _checked_bodies(
    conn: sqlite3.Connection, breaks: list[ChainBreak], accepted: frozenset[int]
) -> Iterator[bytes]:
    prev, expected = GENESIS_HASH, 1
    cur = conn.execute(
        "SELECT seq, type, ts, CAST(body AS BLOB), hash, typeof(body) FROM events ORDER BY seq"
    )
    while rows := cur.fetchmany(4096):
        for seq, kind, ts, body, stored, storage in rows:
            if seq < 1:  # not a leaf (iter_bodies skips it too), nor a link of the chain
                if seq not in accepted and len(breaks) < MAX_CHAIN_BREAKS:
                    breaks.append(ChainBreak(seq, "seqs start at 1"))
                continue
            if seq != expected and len(breaks) < MAX_CHAIN_BREAKS:
                breaks.append(ChainBreak(expected, "row missing"))
            prev = sha256(prev + body).digest()
            if prev != stored:
                reason = "hash mismatch"
                # Go on from the stored hash, as appends after the break chained on:
                # one changed hash breaks two links, the row's and the next.
                prev = stored
            else:
                reason = _column_problem(body, kind, ts)
            if storage != "blob":  # the same bytes as text, say: still not the contract's
                reason = not_a_blob(storage)
            if reason and seq not in accepted and len(breaks) < MAX_CHAIN_BREAKS:
                breaks.append(ChainBreak(seq, reason))
            expected = seq + 1
            yield body


class _Columns(msgspec.Struct, gc=False):
    """The body's fields that the unhashed type and ts columns repeat: decoding only
    these skips over the data, ~3x faster than the typed decode."""

    type: str
    ts: str


_columns_decoder = msgspec.json.Decoder(_Columns)


def _column_problem(body: bytes, kind: str, ts: str) -> str | None:
    """Why the type or ts column differs from the body, as the verifier words it."""
    try:
        fields = _columns_decoder.decode(body)
    except msgspec.MsgspecError:
        return None  # as before: the verifier, not this scan, reports an undecodable body
    return column_problem(kind, ts, fields.type, fields.ts)


def checkpoint_problem(
    events: int, root_at_size: bytes | None, size: int, root: bytes, what: str = "checkpoint"
) -> str | None:
    """Why a ledger of `events` events, whose tree at `size` has `root_at_size`,
    contradicts a checkpoint (size, root); None when it does not."""
    if events < size:
        return f"ledger has {events} events, {what} covers {size} (truncated)"
    if root_at_size != root:
        return f"root at size {size} differs from the {what} (rewritten)"
    return None
