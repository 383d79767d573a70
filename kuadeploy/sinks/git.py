"""The git export sink (`[export.git]`): every registry change becomes a commit of
`registry.json` on one branch, written from a background task.

The ledger stays the only source: a subscriber queues each committed registry event
(cheap, on the loop, never failing an append), and a worker thread commits them in
order. The only thing ever read back from git is bookkeeping: the `Kua-Seq` and
`Kua-Hash` trailers of the branch's last mirror commit, to know where to resume.
Everything missed (sink down, server stopped, queue overflow) is read again from
the ledger, so a failed write is retried on the next change, or after RETRY_S.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, nullcontext
from itertools import chain
from pathlib import Path
from typing import Any

import pygit2

from kuadeploy.adapters.git import set_timeouts
from kuadeploy.config import GitSinkConfig
from kuadeploy.ledger import reading
from kuadeploy.ledger.store import Ledger, StoredEvent
from kuadeploy.projector import registry_at
from kuadeploy.sinks.gitrepo import GitTarget, SinkError, describe_error, redact
from kuadeploy.sinks.mirror import SINK_EVENT_TYPES, Marker, advance
from projections.registry import Registry

log = logging.getLogger(__name__)

RETRY_S = 30.0
# Beyond this many queued events (a sink down through a bulk import) the queue is
# dropped and the events are read from the ledger instead: memory stays bounded.
MAX_PENDING = 10_000
_SINK_TYPES = frozenset(SINK_EVENT_TYPES)


class _Writer:
    """Thread-confined: runs only on the sink's single worker thread."""

    def __init__(self, target: GitTarget, ledger_path: str, timeout_s: float):
        self.target = target
        self.ledger_path = ledger_path
        self.timeout_s = timeout_s
        self.position = 0  # the last seq the branch is known to mirror
        # The registry as of the commit we wrote last: saves a ledger read per change.
        self._last: tuple[pygit2.Oid, int, Registry] | None = None

    def sync(self, pending: list[StoredEvent], covered_from: int) -> None:
        """Mirror every registry event after the branch's position: from the ledger up
        to `covered_from`, then from `pending` (all of them after `covered_from`)."""
        # A remote that accepts and never answers would hold this thread forever: no
        # failure reported, and no exit (the interpreter joins the thread at exit).
        set_timeouts(self.timeout_s)
        try:
            self._sync(pending, covered_from)
        except BaseException:
            self.target.reset()
            self._last = None
            raise

    def _sync(self, pending: list[StoredEvent], covered_from: int) -> None:
        self.target.prepare()
        parent, marker = self.target.tip()
        known = self._last is not None and self._last[0] == parent
        position = marker.seq if marker else 0
        with self._ledger(not known or position < covered_from) as conn:
            if self._last is not None and known:
                registry = self._last[2]
            else:
                if marker is not None:
                    _check_marker(conn, marker, self.target.branch)
                registry = registry_at(conn, position)
            self.position = position
            backlog = _backlog(conn, position, covered_from) if position < covered_from else ()
            fresh = (p for p in pending if p.seq > max(position, covered_from))
            for stored in chain(backlog, fresh):
                step = advance(registry, stored)
                parent = self.target.commit(step, parent)
                registry, self.position = step.registry, step.seq
                self._last = (parent, step.seq, registry)
        self.target.push()

    def _ledger(self, needed: bool):
        if not needed:
            return nullcontext(None)
        return closing(reading.open_readonly(self.ledger_path))


def _check_marker(conn: sqlite3.Connection, marker: Marker, branch: str) -> None:
    """Resume only on a branch that mirrors this very ledger."""
    row = reading.row_at(conn, marker.seq)
    if row is None:
        raise SinkError(
            f"branch {branch} is at seq {marker.seq}, beyond this ledger's head: "
            "it mirrors another ledger (configure another branch or repository)"
        )
    if row[1].hex() != marker.hash:
        raise SinkError(
            f"branch {branch} records hash {marker.hash[:12]}… at seq {marker.seq}, "
            f"this ledger has {row[1].hex()[:12]}…: it mirrors another ledger"
        )


def _backlog(conn: sqlite3.Connection, after: int, until: int) -> Iterator[StoredEvent]:
    for seq, body, hash_ in reading.iter_events_of(conn, after, until, SINK_EVENT_TYPES):
        yield StoredEvent(seq, body, hash_)


class GitSink:
    name = "git"

    def __init__(
        self,
        config: GitSinkConfig,
        ledger: Ledger,
        data_dir: str,
        report: Callable[[dict[str, Any]], None],
        max_pending: int = MAX_PENDING,
        timeout_s: float = 300.0,
    ):
        self.config = config
        self._max_pending = max_pending
        self._ledger = ledger
        self._report = report
        target = GitTarget(config.repo, config.branch, Path(data_dir) / "sinks")
        self._writer = _Writer(target, ledger.path, timeout_s)
        self._pending: list[StoredEvent] = []
        self._covered_from = 0  # _pending holds every registry event after this seq
        self._wake = asyncio.Event()
        self._due = False  # something to mirror (or retry) since the last round
        self._stopping = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="git-sink")
        self._task: asyncio.Task | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.failures = 0
        self.error: str | None = None
        self.synced = False  # at least one round went through

    def start(self) -> None:
        """Subscribe and start catching up; returns at once."""
        self._covered_from = self._ledger.head.seq  # before it: read from the ledger
        self._unsubscribe = self._ledger.subscribe(self._on_commit)
        self._due = True
        self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="git-sink")
        self._report(self.status())

    def _on_commit(self, batch: list[StoredEvent]) -> None:
        """Runs inside the ledger's commit: only filter and queue."""
        mine = [s for s in batch if s.event.type in _SINK_TYPES]
        if not mine:
            return
        if len(self._pending) + len(mine) > self._max_pending:
            self._pending.clear()
            self._covered_from = batch[-1].seq
        else:
            self._pending.extend(mine)
        self._due = True
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self._wake.is_set():
                retry = RETRY_S if self.error else None
                try:
                    await asyncio.wait_for(self._wake.wait(), retry)
                except TimeoutError:
                    self._due = True  # a failed round is retried even without new events
            if self._stopping and not self._due:
                return  # closing with nothing new: what failed before waits for the next start
            self._due = False
            self._wake.clear()
            if not await self._round() and self._stopping:
                return

    async def _round(self) -> bool:
        pending, covered_from = list(self._pending), self._covered_from
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._writer.sync, pending, covered_from)
        except Exception as exc:
            self.failures += 1
            self.error = redact(describe_error(exc), self.config.repo)
            log.error("git sink %s: %s", self.config.branch, self.error)
            ok = False
        else:
            if self.error:
                log.info("git sink %s: recovered at seq %d", self.config.branch, self.position)
            self.error = None
            self.synced = ok = True
        finally:
            self._forget_mirrored()
        self._report(self.status())
        return ok

    def _forget_mirrored(self) -> None:
        position = self._writer.position
        self._pending = [p for p in self._pending if p.seq > position]
        # What is pruned was mirrored; should the branch ever fall back (a repository
        # replaced by an empty one), it is read from the ledger again.
        self._covered_from = max(self._covered_from, position)

    @property
    def position(self) -> int:
        return self._writer.position

    def status(self) -> dict[str, Any]:
        return {
            "ok": self.error is None,
            "error": self.error,
            "branch": self.config.branch,
            "last_seq": self.position if self.synced or self.error else None,
            "pending": len(self._pending),
            "failures": self.failures,
        }

    async def close(self, timeout: float = 5.0) -> None:
        """Stop taking events and flush what is queued, for at most `timeout` seconds;
        anything left is caught up from the ledger on the next start."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                log.warning("git sink %s: not flushed at shutdown", self.config.branch)
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)
