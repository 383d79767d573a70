"""Start-up: open the ledger only if it still contains what was signed before.

`open_checked(config)` is how the service opens its ledger:

1. the signing key is loaded (made on first start);
2. `check_ledger` reads the mirrored checkpoint (`DATA_DIR/checkpoints/latest` or
   `checkpoint_mirror`), verifies its signature with our key and origin, and
   recomputes the root at its size from the event bodies (not from the node
   cache); the last checkpoint in the ledger's own table is checked the same way,
   and the hash chain in the same pass (a changed hash column leaves the bodies'
   tree alone: only the chain shows it), with the unhashed type and ts columns
   against the bodies;
3. a broken chain, or a ledger shorter than a checkpoint or with another root at
   its size, is refused with LedgerRewound, naming the seq or the sizes. With
   `allow_rewind=True` (the serve flag `--accept-ledger-rewind`) it is accepted
   instead: the Merkle node cache is rebuilt from the events, checkpoints the
   ledger no longer contains are dropped from the table, and a
   `CheckpointOverridden` event in stream `system` records the old and the new
   size and root, and the seqs of accepted chain breaks (hash mismatches, type or
   ts columns that differ from the body), which later start-ups then accept (a
   ledger with a seq gap cannot be accepted: it has no tree);
4. the ledger opens with its node cache checked against the tree just
   recomputed (every stored node, through the scan's NodeDigest), and a
   Checkpointer signs the head and then every new batch.

Without a mirror file (first start, or a new mirror volume) there is nothing to
check against: the ledger is trusted as it is, and the log says so.

The check reads every row once: one to two seconds per million events.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

import msgspec

from kuadeploy import events
from kuadeploy.audit.checkpointer import Checkpointer, latest_checkpoint
from kuadeploy.audit.checkpoints import checkpoint_problem, scan_ledger
from kuadeploy.audit.keys import checkpoint_origin, load_signer
from kuadeploy.audit.merkle import TreeState, root_at
from kuadeploy.audit.note import Checkpoint, NoteError, Verifier, open_checkpoint
from kuadeploy.config import Config
from kuadeploy.events import CheckpointOverridden
from kuadeploy.ledger import reading
from kuadeploy.ledger.schema import prepare_file
from kuadeploy.ledger.store import Ledger, NewEvent, StoredEvent, utc_now
from kuadeploy.ledger.tree import LedgerNodes, NodeDigest

log = logging.getLogger(__name__)


class LedgerRewound(Exception):
    """The ledger does not contain what an earlier checkpoint signed; the service
    must not start on it without an explicit override."""


class StartupCheck(NamedTuple):
    problem: str | None  # the first contradiction found, None when all is well
    refused: Checkpoint | None  # the checkpoint the problem is about, if readable
    tree: TreeState  # recomputed from the bodies, at the head
    chain_breaks: tuple[int, ...] = ()  # seqs of chain breaks but seq gaps, to accept
    nodes: dict[int, bytes] | None = None  # NodeDigest of that tree's stored levels


class AuditedLedger(NamedTuple):
    ledger: Ledger
    checkpointer: Checkpointer
    overridden: StoredEvent | None  # the CheckpointOverridden event, when accepted


def check_ledger(ledger_path: str, mirror: Path, verifier: Verifier, origin: str) -> StartupCheck:
    """Check the ledger file's chain, and its tree against the mirrored checkpoint
    and the last checkpoint in its own table (synchronous: run it in a thread)."""
    claims: list[tuple[str, Checkpoint]] = []
    try:
        note = mirror.read_bytes()
    except FileNotFoundError:
        log.warning("no mirrored checkpoint at %s: nothing to check the ledger against", mirror)
    else:
        try:
            claims.append((f"mirrored checkpoint {mirror}", _open(note, verifier, origin)))
        except NoteError as exc:
            return StartupCheck(
                f"the mirrored checkpoint {mirror} does not verify with our key "
                f"{verifier.name}+{verifier.key_id.hex()}: {exc}",
                _parse_unverified(note),
                _tree_of(ledger_path),
            )
    with closing(reading.open_readonly(ledger_path)) as conn:
        row = latest_checkpoint(conn)
        if row is not None:
            claims.append(
                (
                    "last checkpoint in the ledger's table",
                    Checkpoint(origin, row.size, row.root),
                )
            )
        nodes = NodeDigest()
        roots, tree, broken = scan_ledger(
            conn,
            [c.size for _, c in claims],
            check_chain=True,
            accepted_breaks=accepted_chain_breaks(conn),
            nodes=nodes,
        )
    if broken:
        refused = claims[0][1] if claims else None
        acceptable = tuple(b.seq for b in broken if b.reason != "row missing")
        return StartupCheck(str(broken[0]), refused, tree, acceptable)
    for what, claim in claims:
        problem = checkpoint_problem(tree.size, roots.get(claim.size), claim.size, claim.root, what)
        if problem is not None:
            return StartupCheck(problem, claim, tree)
    return StartupCheck(None, None, tree, nodes=nodes.digests())


async def open_checked(
    config: Config, *, allow_rewind: bool = False, clock: Callable[[], str] = utc_now
) -> AuditedLedger:
    """Open the ledger after the start-up check (see the module doc); raises
    LedgerRewound, or CheckpointRefused when the checkpoint table contradicts
    the head."""
    signer = await asyncio.to_thread(load_signer, config)
    origin = checkpoint_origin(config, signer)
    mirror = config.checkpoint_mirror_path
    path = config.ledger_path
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(prepare_file, path)
    check = await asyncio.to_thread(check_ledger, path, mirror, signer.verifier, origin)
    if check.problem is not None and not allow_rewind:
        raise LedgerRewound(
            f"{path}: {check.problem}. Refusing to start on a ledger that lost or changed "
            "signed events; to accept it as it is, start with --accept-ledger-rewind "
            "(this is recorded in the ledger)"
        )
    overridden = None
    if check.problem is None:
        ledger = await Ledger.open(
            path, clock=clock, verified_tree=check.tree, verified_nodes=check.nodes
        )
    else:
        log.warning("accepting the ledger despite: %s", check.problem)
        ledger = await Ledger.open(path, clock=clock, rebuild_tree=True)
    try:
        if check.problem is not None:
            dropped = await ledger.run_job(drop_checkpoints_not_in_ledger)
            log.warning("dropped %d checkpoints the ledger no longer contains", dropped)
            refused = check.refused
            event = CheckpointOverridden(
                reason=check.problem,
                old_size=None if refused is None else refused.size,
                old_root=None if refused is None else refused.root.hex(),
                new_size=ledger.tree.size,
                new_root=ledger.tree.root().hex(),
                chain_breaks=list(check.chain_breaks),
            )
            [overridden] = await ledger.append([NewEvent("system", event)], actor="system")
        checkpointer = Checkpointer(
            ledger,
            signer,
            origin=origin,
            mirror=mirror,
            interval_s=config.checkpoint_interval_s,
            clock=clock,
        )
        await checkpointer.start()
    except BaseException:
        await ledger.close()
        raise
    return AuditedLedger(ledger, checkpointer, overridden)


def drop_checkpoints_not_in_ledger(conn: sqlite3.Connection) -> int:
    """Delete the checkpoints whose (size, root) the ledger no longer has; how many.

    They were signed consistent with each other, so those still in the ledger are
    a prefix by size: a binary search finds where the ledger departs from them.
    """
    nodes = LedgerNodes(conn)
    (size,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
    rows = conn.execute("SELECT size, root FROM checkpoints ORDER BY size").fetchall()
    lo, hi = 0, len(rows)
    while lo < hi:
        mid = (lo + hi) // 2
        at, root = rows[mid]
        if at <= size and root_at(nodes, at) == root:
            lo = mid + 1
        else:
            hi = mid
    if lo == len(rows):
        return 0
    return conn.execute("DELETE FROM checkpoints WHERE size >= ?", (rows[lo][0],)).rowcount


def accepted_chain_breaks(conn: sqlite3.Connection) -> set[int]:
    """The chain breaks earlier overrides accepted (the stream `system` is short)."""
    rows = conn.execute(
        "SELECT body FROM events WHERE stream = 'system' AND type = 'CheckpointOverridden'"
    ).fetchall()
    breaks = set()
    for (body,) in rows:
        try:
            data = events.decode(body).data
        except msgspec.MsgspecError:
            continue  # the chain check itself reports a body that does not decode
        if isinstance(data, CheckpointOverridden):  # the type column is not hashed
            breaks.update(data.chain_breaks)
    return breaks


def _open(note: bytes, verifier: Verifier, origin: str) -> Checkpoint:
    return open_checkpoint(note, [verifier], origin=origin)


def _parse_unverified(note: bytes) -> Checkpoint | None:
    """The size and root a checkpoint that failed verification claims, for the record."""
    try:
        text = note.decode("utf-8")
        return Checkpoint.parse(text[: text.rfind("\n\n") + 1])
    except (UnicodeDecodeError, NoteError):
        return None


def _tree_of(ledger_path: str) -> TreeState:
    with closing(reading.open_readonly(ledger_path)) as conn:
        return scan_ledger(conn, []).tree
