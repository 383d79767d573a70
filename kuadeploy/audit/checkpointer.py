"""Signs C2SP checkpoints of the ledger's Merkle tree as it grows.

After a committed batch the checkpointer signs the new head: at once when the
last signature is older than `interval_s`, else when that interval is up, so a
busy ledger gets at most one checkpoint per interval and an idle ledger's latest
checkpoint covers its head within about an interval. Each one is first proven
consistent with the last one signed (never sign a checkpoint that contradicts an
earlier one: that is refused loudly and signing stops), then stored in the
table `checkpoints` through the ledger's writer, then mirrored atomically to a
file (in a thread) that the next start-up checks the ledger against.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from kuadeploy.audit.checkpoints import SignedCheckpoint
from kuadeploy.audit.merkle import ProofError, consistency_proof, verify_consistency
from kuadeploy.audit.note import Checkpoint, NoteError, Signer, open_checkpoint, sign_checkpoint
from kuadeploy.files import write_atomic
from kuadeploy.ledger.store import Ledger, LedgerClosed, StoredEvent, utc_now

log = logging.getLogger(__name__)


class CheckpointRefused(Exception):
    """Signing the head would contradict a checkpoint signed before."""


class Checkpointer:
    def __init__(
        self,
        ledger: Ledger,
        signer: Signer,
        *,
        origin: str,
        mirror: Path,
        interval_s: float = 1.0,
        clock: Callable[[], str] = utc_now,
    ):
        self.ledger = ledger
        self.signer = signer
        self.origin = origin
        self.mirror = mirror
        self.interval_s = interval_s
        self.latest: SignedCheckpoint | None = None
        self.failure: str | None = None  # why signing stopped, for health checks
        self.mirror_error: str | None = None
        self.signed = 0  # checkpoints signed by this process
        self._clock = clock
        self._lock = asyncio.Lock()
        self._next_at = 0.0  # time.monotonic() before which no new signature starts
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    async def start(self) -> None:
        """Load the last checkpoint signed, sign the head if it is not covered yet
        (an empty ledger gets one of size 0), bring the mirror up to date, and from
        now on sign after commits. Raises CheckpointRefused when the head
        contradicts the last checkpoint."""
        self.latest = await self.ledger.run_job(latest_checkpoint)
        self.ledger.subscribe(self._on_commit)
        self.ledger.on_close(self.close)
        if not await self.sign_head():
            assert self.latest is not None
            if not self._genuine(self.latest):
                await self._resign(self.latest)
            current = await asyncio.to_thread(_read_text, self.mirror)
            if current != self.latest.note:
                await self._write_mirror(self.latest.note)

    async def sign_head(self) -> bool:
        """Sign a checkpoint of the current head unless the latest covers it;
        whether one was signed."""
        async with self._lock:
            if self.failure is not None:
                raise CheckpointRefused(self.failure)
            tree = self.ledger.tree
            size, root = tree.size, tree.root()
            last = self.latest
            if last is not None:
                await self._check_consistent(last, size, root)
                if size == last.size:
                    return False
            self._next_at = time.monotonic() + self.interval_s
            note = sign_checkpoint(Checkpoint(self.origin, size, root), self.signer)
            await self.ledger.run_job(_insert_checkpoint, size, root, note, self._clock())
            self.latest = SignedCheckpoint(size, root, note)
            self.signed += 1
            await self._write_mirror(note)
            return True

    def _genuine(self, latest: SignedCheckpoint) -> bool:
        """Whether the row's note is ours and says the row's size and root. Start-up
        checks only those two columns, and another genuine note of ours (the table
        keeps them all) would roll the mirror back to an older size."""
        try:
            signed = open_checkpoint(latest.note, [self.signer.verifier], origin=self.origin)
        except NoteError:
            return False
        return (signed.size, signed.root) == (latest.size, latest.root)

    async def _resign(self, latest: SignedCheckpoint) -> None:
        """Sign the row's size and root afresh: sign_head has just proven them to be
        the ledger's tree at the head."""
        log.warning(
            "the note of checkpoint %d in the table is not its own; re-signing", latest.size
        )
        note = sign_checkpoint(Checkpoint(self.origin, latest.size, latest.root), self.signer)
        await self.ledger.run_job(_replace_note, latest.size, note)
        self.latest = latest._replace(note=note)

    async def close(self) -> None:
        """Sign the head as it is once the appends queued so far have committed."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.ledger.run_job(_nothing)  # a barrier behind the queued appends
            await self.sign_head()
        except (CheckpointRefused, LedgerClosed):
            pass
        except Exception:
            log.exception("signing the last checkpoint failed")

    async def _check_consistent(self, last: SignedCheckpoint, size: int, root: bytes) -> None:
        if size < last.size:
            self._refuse(
                f"the ledger has {size} events, fewer than the {last.size} "
                "of the last signed checkpoint"
            )
        proof = await self.ledger.read_tree(consistency_proof, last.size, size)
        try:
            verify_consistency(last.size, size, proof, last.root, root)
        except ProofError as exc:
            self._refuse(
                f"the tree of size {size} is not consistent with the checkpoint "
                f"signed at size {last.size}: {exc}"
            )

    def _refuse(self, why: str) -> None:
        self.failure = f"not signing checkpoints any more: {why}"
        log.critical("%s", self.failure)
        raise CheckpointRefused(self.failure)

    async def _write_mirror(self, note: str) -> None:
        try:
            await asyncio.to_thread(write_atomic, self.mirror, note.encode())
        except OSError as exc:  # the table has it; the next signature tries again
            self.mirror_error = f"cannot write the checkpoint mirror {self.mirror}: {exc}"
            log.error("%s", self.mirror_error)
        else:
            self.mirror_error = None

    # --- scheduling -------------------------------------------------------------------

    def _on_commit(self, committed: list[StoredEvent]) -> None:
        idle = self._timer is None and self._task is None
        if idle and self.failure is None and not self._closing:
            delay = max(0.0, self._next_at - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._task = asyncio.get_running_loop().create_task(self._sign_in_background())

    async def _sign_in_background(self) -> None:
        try:
            await self.sign_head()
        except (CheckpointRefused, LedgerClosed):
            pass
        except Exception:
            log.exception("signing a checkpoint failed; retrying after the interval")
            self._next_at = time.monotonic() + self.interval_s
        finally:
            self._task = None
        latest = self.latest
        if latest is None or self.ledger.tree.size > latest.size:  # commits while signing
            self._on_commit([])


# --- the table `checkpoints` (run on the writer connection) ------------------------------


def latest_checkpoint(conn: sqlite3.Connection) -> SignedCheckpoint | None:
    row = conn.execute(
        "SELECT size, root, note FROM checkpoints ORDER BY size DESC LIMIT 1"
    ).fetchone()
    return SignedCheckpoint(*row) if row else None


def _insert_checkpoint(
    conn: sqlite3.Connection, size: int, root: bytes, note: str, ts: str
) -> None:
    conn.execute(
        "INSERT INTO checkpoints (size, root, note, ts) VALUES (?, ?, ?, ?)", (size, root, note, ts)
    )


def _replace_note(conn: sqlite3.Connection, size: int, note: str) -> None:
    conn.execute("UPDATE checkpoints SET note = ? WHERE size = ?", (note, size))


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None
