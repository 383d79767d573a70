"""The ledger store on aiosqlite: atomic, group-committed appends and streaming reads.

One writer task owns the write connection. Appenders queue a request and await
its future; the writer takes every request queued at that moment, checks each
one's expected stream versions, and commits all of their rows in one
transaction (one fsync). A request whose check fails gets a ConflictError and
the rest of the batch still commits. Futures resolve only after the commit
returned, so an awaited append is on disk.

A lone request's commit runs on the event loop, the way Redis runs `appendfsync
always`: a hop to a worker thread costs ~50 µs here, a third of a durable commit,
and with nothing else waiting there is nothing to overlap it with. When nobody
could join it at all (queue empty, writer idle, nothing else ready on the loop),
the caller commits in its own turn, skipping the queue and two task switches. A batch with
others waiting is committed on a dedicated thread, so the loop prepares the next
batch during the fsync; so is every commit while the disk is slow (commits
averaging over 2 ms), so that the loop keeps serving. Reads go through
aiosqlite's own connection thread.

The Merkle tree over the events (kuadeploy/ledger/tree.py) is a cache that adds
no statement and no fsync to the commit: after a batch commits, the writer
advances the in-memory compact range from the batch's bodies (two SHA-256 an
event, about a microsecond) and keeps the completed nodes in memory; once 256
are pending it writes them in a transaction of their own, without an fsync (the
next event commit's fsync covers them). Proofs read pending nodes from memory
and the rest from the table, so every size up to the head is answerable at
once; a crash loses only pending nodes, which the next open recomputes from the
bodies.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from hashlib import sha256
from typing import Any, NamedTuple, TypeVar

import aiosqlite

from kuadeploy import events
from kuadeploy.audit.merkle import TreeState
from kuadeploy.events import Envelope, EventData
from kuadeploy.ledger.chain import GENESIS, Head
from kuadeploy.ledger.schema import prepare_file
from kuadeploy.ledger.tree import LedgerNodes, advance, insert_nodes, iter_bodies, load_tree

log = logging.getLogger(__name__)

# Rows per INSERT statement: 7 parameters each stays far below SQLite's limit.
_ROWS_PER_STATEMENT = 256
_MAX_BATCH_ROWS = 8192
_STREAM_CACHE_LIMIT = 100_000
_SLOW_COMMIT_S = 0.002
_FAST_COMMIT_S = 0.0005
# Pending Merkle nodes written together: one INSERT statement, ~2048 events' worth.
_NODE_FLUSH_ROWS = 256

T = TypeVar("T")


class NewEvent(NamedTuple):
    stream: str
    data: EventData
    # None: append wherever the stream is; an int: the stream must be at exactly this
    # version (0 = the stream must not exist yet).
    expected_version: int | None = None


class StoredEvent:
    """A committed event: its exact stored bytes, chain hash, and decoded envelope."""

    __slots__ = ("_event", "body", "hash", "seq")

    def __init__(self, seq: int, body: bytes, hash: bytes, event: Envelope | None = None):
        self.seq = seq
        self.body = body
        self.hash = hash
        self._event = event

    @property
    def event(self) -> Envelope:
        if self._event is None:
            self._event = events.decode(self.body)
        return self._event

    def __repr__(self) -> str:
        return f"StoredEvent(seq={self.seq}, type={self.event.type}, stream={self.event.stream})"


class ConflictError(Exception):
    """An expected stream version did not match: someone else appended first."""

    def __init__(self, stream: str, expected: int, actual: int):
        super().__init__(f"{stream}: expected version {expected}, stream is at {actual}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class LedgerClosed(Exception):
    pass


_second: list = [None, ""]  # the last whole second formatted, and its text


def utc_now() -> str:
    """RFC 3339 UTC with microseconds and Z. On the append path: strftime per call
    costs more than the rest of staging, so the seconds part is formatted once."""
    us = time.time_ns() // 1000
    second, micro = divmod(us, 1_000_000)
    if second != _second[0]:
        _second[0] = second
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{micro:06d}Z"


class _Request:
    __slots__ = ("actor", "future", "items")

    def __init__(self, items: Sequence[NewEvent], actor: str, future: asyncio.Future):
        self.items = items
        self.actor = actor
        self.future = future


class _Snapshot(NamedTuple):
    seq: int
    hash: bytes
    format: int
    state: bytes


class _Job(NamedTuple):
    """fn(writer connection, *args), run by the writer between commits."""

    fn: Callable[..., Any]
    args: tuple
    future: asyncio.Future


_STOP = object()
Subscriber = Callable[[list[StoredEvent]], None]


class Ledger:
    def __init__(
        self,
        path: str,
        writer: sqlite3.Connection,
        reader: aiosqlite.Connection,
        head: Head,
        last_ts: str,
        clock: Callable[[], str],
        tree: TreeState,
    ):
        self.path = path
        self._writer = writer
        self._reader = reader
        self._head = head
        self._last_ts = last_ts
        self._clock = clock
        self._versions: dict[str, int] = {}
        self._queue: asyncio.Queue = asyncio.Queue()
        self._writing = asyncio.Lock()  # one batch at a time, the writer's or a lone caller's
        self._subscribers: list[Subscriber] = []
        self._closed = False
        self._commit_ewma = 0.0
        self._threaded = False
        self._executor: ThreadPoolExecutor | None = None
        # The ledger lives on the loop that opened it; asyncio.get_running_loop() checks
        # the process id, a system call, on every call.
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run_writer())
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent commit sizes
        self._tree = tree
        self._pending_nodes: dict[tuple[int, int], bytes] = {}
        self._closers: list[Callable[[], Any]] = []
        self._stopping = False
        self._tree_executor: ThreadPoolExecutor | None = None
        self._tree_conn: sqlite3.Connection | None = None

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        clock: Callable[[], str] = utc_now,
        verified_tree: TreeState | None = None,
        verified_nodes: dict[int, bytes] | None = None,
        rebuild_tree: bool = False,
    ) -> Ledger:
        """Open (creating or migrating) the ledger at `path`. Its Merkle node cache
        is completed from the events; it is rebuilt from scratch when it disagrees
        with `verified_tree` or `verified_nodes` (the tree and the NodeDigest
        recomputed from the bodies by a start-up check) or when `rebuild_tree` is
        set."""
        await asyncio.to_thread(prepare_file, path)
        writer = sqlite3.connect(
            path, isolation_level=None, cached_statements=512, check_same_thread=False
        )
        try:
            writer.execute("PRAGMA synchronous = FULL")
            writer.execute("PRAGMA busy_timeout = 10000")
            head, last_ts = _read_head(writer)
            tree = await asyncio.to_thread(
                load_tree,
                writer,
                head.seq,
                expected=verified_tree,
                expected_nodes=verified_nodes,
                rebuild=rebuild_tree,
            )
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute("PRAGMA busy_timeout = 10000")
        except BaseException:
            writer.close()
            raise
        return cls(path, writer, reader, head, last_ts, clock, tree)

    # --- writing --------------------------------------------------------------------

    @property
    def head(self) -> Head:
        return self._head

    @property
    def head_ts(self) -> str | None:
        """The time of the head event (None for an empty ledger)."""
        return self._last_ts or None

    @property
    def tree(self) -> TreeState:
        """The Merkle tree's compact range at the head (leaf i = body of seq i + 1)."""
        return self._tree

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """`fn` sees every committed batch, in order, before any appender resumes."""
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn)

    async def append(self, items: Sequence[NewEvent], *, actor: str) -> list[StoredEvent]:
        """Append atomically; returns once the events are committed to disk."""
        if self._closed:
            raise LedgerClosed("ledger is closed")
        if not items:
            return []
        future = self._loop.create_future()
        request = _Request(items, actor, future)
        if self._alone():
            # Nothing to group with: commit in the caller's own turn, as the writer would
            # (inline, see the module doc), without a trip through the queue and two
            # task switches. The lock keeps the writer out meanwhile.
            async with self._writing:
                await self._write([request], [], [], False)
        else:
            self._queue.put_nowait(request)
        return await future

    def _alone(self) -> bool:
        """No batch to join and nobody who could start one: the queue is empty, the
        writer idle, and no other callback is ready to run on the loop (asyncio's
        ready queue; unknown on other loops: then never). Commits are fast too."""
        ready = getattr(self._loop, "_ready", None)
        return (
            ready is not None
            and not ready
            and not self._threaded
            and not self._writing.locked()
            and self._queue.empty()
        )

    def save_snapshot(self, seq: int, hash: bytes, fmt: int, state: bytes) -> None:
        """Queue a projection snapshot; written by the writer after pending appends."""
        if not self._closed:
            self._queue.put_nowait(_Snapshot(seq, hash, fmt, state))

    async def run_job(self, fn: Callable[..., T], *args: object) -> T:
        """Run fn(writer connection, *args) in the writer, after the appends queued
        before it: for writes beside the events (checkpoints), and as a barrier."""
        if self._stopping or self._task.done():
            raise LedgerClosed("ledger is closed")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(fn, args, future))
        return await future

    async def read_tree(self, fn: Callable[..., T], *args: object) -> T:
        """Run fn(nodes, *args) in the tree-reading thread, where `nodes` (a
        merkle.NodeSource) has every node of the tree up to the current head,
        pending or stored: proofs and roots for any size <= tree.size."""
        if self._stopping:
            raise LedgerClosed("ledger is closed")
        if self._tree_executor is None:
            self._tree_executor = ThreadPoolExecutor(1, thread_name_prefix="ledger-tree")
        pending = dict(self._pending_nodes)  # nodes already flushed are in the table
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tree_executor, self._read_tree, pending, fn, args)

    def _read_tree(self, pending: dict, fn: Callable[..., T], args: tuple) -> T:
        if self._tree_conn is None:
            self._tree_conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            self._tree_conn.execute("PRAGMA busy_timeout = 10000")
        return fn(LedgerNodes(self._tree_conn, pending), *args)

    def on_close(self, fn: Callable[[], Any]) -> None:
        """Await fn() first thing in close(): appends are refused by then, but
        run_job still works (a last checkpoint)."""
        self._closers.append(fn)

    async def close(self) -> None:
        """Finish every queued append, then close."""
        if not self._closed:
            self._closed = True
            for fn in self._closers:
                try:
                    await fn()
                except Exception:
                    log.exception("ledger close hook failed")
            self._stopping = True
            self._queue.put_nowait(_STOP)
            await self._task
            await self._reader.close()
            if self._tree_executor is not None:
                self._tree_executor.shutdown()
            if self._tree_conn is not None:
                self._tree_conn.close()
            self._writer.close()
            if self._executor is not None:
                self._executor.shutdown()

    async def _run_writer(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Request] = []
            snapshots: list[_Snapshot] = []
            jobs: list[_Job] = []
            item = await self._queue.get()
            rows = 0
            while True:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Snapshot):
                    snapshots.append(item)
                elif isinstance(item, _Job):
                    jobs.append(item)
                else:
                    batch.append(item)
                    rows += len(item.items)
                if stopping or rows >= _MAX_BATCH_ROWS or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            try:
                async with self._writing:
                    await self._write(batch, snapshots, jobs, stopping)
            except BaseException:  # cancelled: nobody may wait forever
                for waiter in [*batch, *jobs]:
                    if not waiter.future.done():
                        waiter.future.set_exception(LedgerClosed("ledger writer stopped"))
                raise

    async def _write(
        self, batch: list[_Request], snapshots: list[_Snapshot], jobs: list[_Job], stopping: bool
    ) -> None:
        if batch:
            try:
                await self._commit(batch)
            except Exception as exc:  # keep the writer alive for the next batch
                log.exception("ledger write failed")
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)
                self._reload()
        if len(self._pending_nodes) >= _NODE_FLUSH_ROWS or stopping:
            await self._flush_nodes()
        for snap in snapshots:
            try:
                await self._run(_insert_snapshot, snap)
            except Exception:  # a snapshot is a cache: losing one costs only time
                log.exception("ledger snapshot at seq %d failed", snap.seq)
        for job in jobs:
            try:
                result = await self._run(job.fn, *job.args)
            except Exception as exc:
                if not job.future.done():
                    job.future.set_exception(exc)
            else:
                if not job.future.done():
                    job.future.set_result(result)

    async def _flush_nodes(self) -> None:
        """Write the pending Merkle nodes. A failure keeps them pending (proofs
        still see them) for the next flush; they are a cache, appends go on."""
        nodes = list(self._pending_nodes.items())
        if not nodes:
            return
        try:
            await self._run(insert_nodes, nodes)
        except Exception:
            log.exception("writing %d merkle nodes failed; keeping them in memory", len(nodes))
            return
        for key, _ in nodes:
            del self._pending_nodes[key]

    async def _commit(self, batch: list[_Request]) -> None:
        for _attempt in range(3):
            self._load_versions({it.stream for r in batch for it in r.items})
            staged, conflicts = self._stage(batch)
            rows = [row for _, stored, rowset in staged for row in rowset]
            if not rows:
                _fail(conflicts)
                return
            committed = [ev for _, stored, _ in staged for ev in stored]
            nodes: dict[tuple[int, int], bytes] = {}  # kept only if the commit lands
            tree_step = partial(advance, self._tree, [ev.body for ev in committed], nodes)
            try:
                tree = await self._insert(
                    rows, alone=len(staged) == 1 and self._queue.empty(), meanwhile=tree_step
                )
            except sqlite3.IntegrityError:
                # Another process appended since we read the head: re-read and retry.
                self._reload()
                continue
            last = committed[-1]
            self._head = Head(last.seq, last.hash)
            self._tree = tree
            self._pending_nodes.update(nodes)
            self._last_ts = last.event.ts
            for ev in committed:
                self._versions[ev.event.stream] = ev.event.version
            self.batch_sizes.append(len(committed))
            for fn in self._subscribers:
                try:
                    fn(committed)
                except Exception:
                    log.exception("ledger subscriber failed")
            for req, stored, _ in staged:
                if not req.future.done():
                    req.future.set_result(stored)
            # Only now, with the winners applied: a loser that decides again sees them.
            _fail(conflicts)
            return
        raise sqlite3.OperationalError("ledger: concurrent writers kept conflicting")

    def _stage(
        self, batch: list[_Request]
    ) -> tuple[list[tuple[_Request, list[StoredEvent], list]], list[tuple[_Request, Exception]]]:
        """Give every acceptable request its seqs, versions and chain hashes; the others
        their ConflictError, to be raised once this batch is committed."""
        seq, prev = self._head
        ts = max(self._clock(), self._last_ts)  # monotonic, so time lookups can bisect
        versions: dict[str, int] = {}  # stream -> version after the requests staged so far
        staged = []
        conflicts: list[tuple[_Request, Exception]] = []
        for req in batch:
            if req.future.done():  # the caller gave up before we wrote: write nothing
                continue
            local: dict[str, int] = {}
            try:
                for it in req.items:
                    if it.stream not in local:
                        current = versions.get(it.stream, self._versions[it.stream])
                        if it.expected_version is not None and it.expected_version != current:
                            raise ConflictError(it.stream, it.expected_version, current)
                        local[it.stream] = current
            except ConflictError as conflict:
                conflicts.append((req, conflict))
                continue
            stored, rows = [], []
            for it in req.items:
                version = local[it.stream] = local[it.stream] + 1
                seq += 1
                env = events.envelope(
                    it.data, seq=seq, ts=ts, stream=it.stream, version=version, actor=req.actor
                )
                body = events.encode(env)
                prev = sha256(prev + body).digest()
                stored.append(StoredEvent(seq, body, prev, env))
                rows.append((seq, it.stream, version, env.type, ts, body, prev))
            versions.update(local)
            staged.append((req, stored, rows))
        return staged, conflicts

    async def _run(self, fn: Callable, *args: object, inline: bool | None = None) -> float:
        """Run a timed write on the loop, or on the commit thread while the disk is slow."""
        if inline if inline is not None else not self._threaded:
            return fn(self._writer, *args)
        return await self._loop.run_in_executor(self._commit_thread(), fn, self._writer, *args)

    def _commit_thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ledger-commit")
        return self._executor

    async def _insert(self, rows: list[tuple], alone: bool, meanwhile: Callable[[], T]) -> T:
        """Commit `rows`, running `meanwhile()` on the loop while the commit thread fsyncs."""
        # Inline only for a lone request: with others waiting, the commit thread lets
        # the loop prepare the next batch while this one is fsynced.
        if alone and not self._threaded:
            elapsed = _insert_rows(self._writer, rows)
            result = meanwhile()
        else:
            thread = self._commit_thread()
            future = self._loop.run_in_executor(thread, _insert_rows, self._writer, rows)
            # Hand the GIL over so the statement starts now (sqlite3 releases the GIL
            # while it writes and fsyncs), not when the loop next blocks; `meanwhile`
            # then runs during the fsync instead of after it (64 writers: +8 %).
            time.sleep(0)
            result = meanwhile()
            elapsed = await future
        self._commit_ewma = 0.8 * self._commit_ewma + 0.2 * elapsed
        if self._threaded and self._commit_ewma < _FAST_COMMIT_S:
            self._threaded = False
        elif not self._threaded and self._commit_ewma > _SLOW_COMMIT_S:
            self._threaded = True
        return result

    def _load_versions(self, streams: set[str]) -> None:
        missing = [s for s in streams if s not in self._versions]
        if len(self._versions) + len(missing) > _STREAM_CACHE_LIMIT:
            self._versions.clear()
            missing = list(streams)
        for i in range(0, len(missing), 500):
            chunk = missing[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found = dict.fromkeys(chunk, 0)
            found.update(
                self._writer.execute(
                    f"SELECT stream, MAX(version) FROM events WHERE stream IN ({marks}) "
                    "GROUP BY stream",
                    chunk,
                ).fetchall()
            )
            self._versions.update(found)

    def _reload(self) -> None:
        self._versions.clear()
        self._head, self._last_ts = _read_head(self._writer)
        size = self._head.seq
        if size > self._tree.size:  # another process appended, or a "failed" commit landed
            bodies = iter_bodies(self._writer, self._tree.size, size)
            self._tree = advance(self._tree, bodies, self._pending_nodes)
        elif size < self._tree.size:
            log.error("ledger head %d is behind its Merkle tree; reloading the tree", size)
            self._pending_nodes.clear()
            self._tree = load_tree(self._writer, size)

    # --- reading --------------------------------------------------------------------

    async def read(self, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        cur = await self._reader.execute(
            "SELECT seq, body, hash FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        )
        return [StoredEvent(s, b, h) for s, b, h in await cur.fetchall()]

    async def iter_events(
        self, after: int = 0, until: int | None = None, page: int = 1000
    ) -> AsyncIterator[StoredEvent]:
        """Every event with after < seq <= until, in pages: constant memory."""
        until = self._head.seq if until is None else until
        while after < until:
            cur = await self._reader.execute(
                "SELECT seq, body, hash FROM events WHERE seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (after, until, page),
            )
            rows = await cur.fetchall()
            if not rows:
                return
            for s, b, h in rows:
                yield StoredEvent(s, b, h)
            after = rows[-1][0]

    async def read_stream(
        self, stream: str, after_version: int = 0, after_seq: int = 0
    ) -> list[StoredEvent]:
        cur = await self._reader.execute(
            "SELECT seq, body, hash FROM events WHERE stream = ? AND version > ? AND seq > ? "
            "ORDER BY version",
            (stream, after_version, after_seq),
        )
        return [StoredEvent(s, b, h) for s, b, h in await cur.fetchall()]

    async def stream_version(self, stream: str) -> int:
        cur = await self._reader.execute(
            "SELECT MAX(version) FROM events WHERE stream = ?", (stream,)
        )
        row = await cur.fetchone()
        return (row[0] if row else None) or 0

    async def event_at(self, seq: int) -> StoredEvent | None:
        cur = await self._reader.execute("SELECT seq, body, hash FROM events WHERE seq = ?", (seq,))
        row = await cur.fetchone()
        return StoredEvent(*row) if row else None

    async def seq_at_time(self, ts: str) -> int:
        """The last seq committed at or before `ts` (canonical RFC 3339); 0 if none."""
        cur = await self._reader.execute("SELECT MAX(seq) FROM events WHERE ts <= ?", (ts,))
        row = await cur.fetchone()
        return (row[0] if row else None) or 0


def _fail(conflicts: list[tuple[_Request, Exception]]) -> None:
    for req, exc in conflicts:
        if not req.future.done():
            req.future.set_exception(exc)


def _read_head(conn: sqlite3.Connection) -> tuple[Head, str]:
    row = conn.execute("SELECT seq, hash, ts FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return GENESIS, ""
    return Head(row[0], row[1]), row[2]


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple]) -> float:
    """Commit `rows` durably; returns the seconds it took."""
    started = time.perf_counter()
    if len(rows) <= _ROWS_PER_STATEMENT:
        # A single statement in autocommit mode is its own durable transaction.
        conn.execute(_insert_sql(len(rows)), [v for r in rows for v in r])
    else:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for i in range(0, len(rows), _ROWS_PER_STATEMENT):
                chunk = rows[i : i + _ROWS_PER_STATEMENT]
                conn.execute(_insert_sql(len(chunk)), [v for r in chunk for v in r])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return time.perf_counter() - started


def _insert_snapshot(conn: sqlite3.Connection, snap: _Snapshot) -> float:
    started = time.perf_counter()
    conn.execute(
        "INSERT OR REPLACE INTO snapshots (seq, hash, format, state) VALUES (?, ?, ?, ?)", snap
    )
    return time.perf_counter() - started


_SQL_CACHE: dict[int, str] = {}


def _insert_sql(n: int) -> str:
    sql = _SQL_CACHE.get(n)
    if sql is None:
        values = ",".join(["(?,?,?,?,?,?,?)"] * n)
        sql = f"INSERT INTO events (seq, stream, version, type, ts, body, hash) VALUES {values}"
        _SQL_CACHE[n] = sql
    return sql
