"""The ledger's Merkle node cache: derived from the bodies, never in the event commit,
answerable before it is flushed, and whole again after a crash or on an old ledger."""

from __future__ import annotations

import asyncio
import random
import sqlite3

import pytest

from kuadeploy.audit.merkle import (
    TreeState,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_at,
    verify_consistency,
    verify_inclusion,
)
from kuadeploy.ledger import Ledger, store
from kuadeploy.ledger.tree import STORED_FROM_LEVEL, advance
from tests.support import register


def reference(bodies: list[bytes]) -> TreeState:
    return TreeState().append([leaf_hash(b) for b in bodies])[0]


def stored_node_count(size: int) -> int:
    """Perfect subtrees of level >= STORED_FROM_LEVEL in a tree of `size` leaves."""
    return sum(size >> level for level in range(STORED_FROM_LEVEL, 64))


async def fill(led: Ledger, n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    bodies: list[bytes] = []
    while len(bodies) < n:
        k = min(n - len(bodies), rng.randint(1, 9))
        stored = await led.append(
            [register(f"a{rng.randrange(5)}", f"b{len(bodies) + i}") for i in range(k)], actor="t"
        )
        bodies += [s.body for s in stored]
    return bodies


def rows(path: str, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def execute(path: str, sql: str, args: tuple = ()) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(sql, args)
    conn.close()


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "ledger.db")


def test_advance_equals_the_reference_append():
    rng = random.Random(5)
    state, pending = TreeState(), {}
    ref, ref_nodes = TreeState(), []
    for _ in range(300):
        bodies = [rng.randbytes(rng.randint(1, 40)) for _ in range(rng.randint(0, 20))]
        state = advance(state, bodies, pending)
        ref, nodes = ref.append([leaf_hash(b) for b in bodies])
        ref_nodes += nodes
        assert state == ref
    stored = {(n.level, n.index): n.hash for n in ref_nodes if n.level >= STORED_FROM_LEVEL}
    assert pending == stored


async def test_the_tree_follows_every_commit_and_answers_before_any_flush(path):
    led = await Ledger.open(path)
    bodies = await fill(led, 700)
    assert led.tree == reference(bodies)
    assert rows(path, "SELECT COUNT(*) FROM merkle_nodes") == [(0,)], "nothing flushed yet"
    rng = random.Random(2)
    for _ in range(60):
        size = rng.randint(1, len(bodies))
        index = rng.randrange(size)
        root = await led.read_tree(root_at, size)
        assert root == reference(bodies[:size]).root()
        proof = await led.read_tree(inclusion_proof, index, size)
        verify_inclusion(index, size, leaf_hash(bodies[index]), proof, root)
        old = rng.randint(0, size)
        proof = await led.read_tree(consistency_proof, old, size)
        verify_consistency(old, size, proof, reference(bodies[:old]).root(), root)
    await led.close()
    assert rows(path, "SELECT COUNT(*) FROM merkle_nodes") == [(stored_node_count(700),)]


FLUSH = (
    "PRAGMA synchronous = NORMAL",
    "BEGIN IMMEDIATE",
    "INSERT OR IGNORE INTO merkle_nodes",
    "COMMIT",
    "PRAGMA synchronous = FULL",
)


async def test_the_event_commit_stays_one_statement(path):
    led = await Ledger.open(path)
    await fill(led, 4000)
    statements: list[str] = []
    led._writer.set_trace_callback(statements.append)
    for i in range(300):
        await led.append([register("web", f"x{i}")], actor="t")
    led._writer.set_trace_callback(None)
    await led.close()
    writes = [s for s in statements if not s.startswith("SELECT")]
    events = [s for s in writes if s.startswith("INSERT INTO events")]
    assert len(events) == 300  # one autocommit statement (one fsync) per commit
    others = [s for s in writes if not s.startswith("INSERT INTO events")]
    assert all(s.startswith(FLUSH) for s in others), others
    # 300 events complete ~38 stored nodes: at most one flush of the pending ones.
    assert others.count("PRAGMA synchronous = NORMAL") <= 1


async def test_nodes_are_flushed_in_batches_without_their_own_fsync(path):
    led = await Ledger.open(path)
    statements: list[str] = []
    led._writer.set_trace_callback(statements.append)
    await fill(led, 9000)
    led._writer.set_trace_callback(None)
    await led.close()
    flushes = statements.count("PRAGMA synchronous = NORMAL")
    # ~1/8 stored node an event, flushed >= 256 at a time: every ~2048 events.
    assert 1 <= flushes <= 9000 // 2048
    assert statements.count("PRAGMA synchronous = FULL") == flushes
    nodes = [s for s in statements if s.startswith("INSERT OR IGNORE INTO merkle_nodes")]
    assert len(nodes) >= flushes


async def test_reopen_loads_the_same_tree(path):
    led = await Ledger.open(path)
    bodies = await fill(led, 1234)
    await led.close()
    led = await Ledger.open(path)
    assert led.tree == reference(bodies)
    bodies += await fill(led, 100, seed=2)
    assert led.tree == reference(bodies)
    await led.close()


@pytest.mark.parametrize(
    "lost",
    [
        # a crash before the last flush: the newest nodes of every level are gone
        "DELETE FROM merkle_nodes WHERE (idx + 1) << level > 1500",
        "DELETE FROM merkle_nodes",  # a ledger made before the node cache
        "DELETE FROM merkle_nodes WHERE level = 5 AND idx < 20",  # rows deleted by hand
        "DELETE FROM merkle_nodes WHERE level = 10",  # a peak of the stored prefix
        "DELETE FROM merkle_nodes WHERE (level + idx) % 3 = 0",  # scattered rows
    ],
)
async def test_lost_nodes_are_recomputed_with_the_same_roots(path, lost):
    led = await Ledger.open(path)
    bodies = await fill(led, 2100)
    await led.close()
    execute(path, lost)
    led = await Ledger.open(path)
    assert led.tree == reference(bodies)
    for size in (1, 16, 17, 1024, 1500, 2047, 2048, 2100):
        assert await led.read_tree(root_at, size) == reference(bodies[:size]).root()
        proof = await led.read_tree(inclusion_proof, size // 2, size)
        root = reference(bodies[:size]).root()
        verify_inclusion(size // 2, size, leaf_hash(bodies[size // 2]), proof, root)
    await led.close()


async def test_a_version_1_ledger_gets_its_tables_and_its_tree(path):
    led = await Ledger.open(path)
    bodies = await fill(led, 600)
    await led.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE merkle_nodes")
    conn.execute("DROP TABLE checkpoints")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    led = await Ledger.open(path)
    assert led.tree == reference(bodies)
    await led.close()
    assert rows(path, "PRAGMA user_version") == [(2,)]
    assert rows(path, "SELECT COUNT(*) FROM merkle_nodes") == [(stored_node_count(600),)]
    assert rows(path, "SELECT COUNT(*) FROM checkpoints") == [(0,)]


async def test_stale_nodes_are_replaced(path):
    led = await Ledger.open(path)
    bodies = await fill(led, 900)
    await led.close()
    # Nodes beyond the end (as if the events had been cut back), and a wrong hash
    # in the last stored block: both found at open.
    execute(path, "INSERT INTO merkle_nodes VALUES (4, 999, zeroblob(32))")
    execute(path, "UPDATE merkle_nodes SET hash = zeroblob(32) WHERE level = 4 AND idx = 55")
    led = await Ledger.open(path)
    assert led.tree == reference(bodies)
    await led.close()
    assert rows(path, "SELECT COUNT(*) FROM merkle_nodes WHERE idx = 999") == [(0,)]
    # A wrong node the cheap checks cannot see: the tree the start-up check
    # recomputed from the bodies disagrees, and the cache is rebuilt.
    execute(path, "UPDATE merkle_nodes SET hash = zeroblob(32) WHERE level = 9 AND idx = 0")
    led = await Ledger.open(path, verified_tree=reference(bodies))
    assert await led.read_tree(root_at, 512) == reference(bodies[:512]).root()
    await led.close()


async def test_two_writers_on_one_file_keep_their_trees_right(path):
    """A second process appending (here a second Ledger): each writer, on finding
    the head moved, reads the new bodies into its tree."""
    first = await Ledger.open(path)
    second = await Ledger.open(path)
    for i in range(40):
        await (first if i % 3 else second).append([register(f"a{i % 4}", f"b{i}")], actor="t")
    bodies = [b for (b,) in rows(path, "SELECT body FROM events ORDER BY seq")]
    for led in (first, second):
        await led.append([register("last", f"by{id(led)}")], actor="t")
        bodies.append(rows(path, "SELECT body FROM events ORDER BY seq DESC LIMIT 1")[0][0])
    assert second.tree == reference(bodies)
    await first.append([register("final")], actor="t")
    bodies.append(rows(path, "SELECT body FROM events ORDER BY seq DESC LIMIT 1")[0][0])
    assert first.tree == reference(bodies)
    await first.close()
    await second.close()
    led = await Ledger.open(path)
    assert led.tree == reference(bodies)
    assert await led.read_tree(root_at, 30) == reference(bodies[:30]).root()
    await led.close()


def stored_nodes(bodies: list[bytes]) -> dict[tuple[int, int], bytes]:
    _, nodes = TreeState().append([leaf_hash(b) for b in bodies])
    return {(n.level, n.index): n.hash for n in nodes if n.level >= STORED_FROM_LEVEL}


async def test_a_batch_on_the_commit_thread_moves_the_tree_only_if_it_lands(path, monkeypatch):
    """The tree step runs while the commit thread fsyncs; a batch whose commit fails
    leaves no trace in the tree or the node cache, even for leaves never reached again."""
    real, failing = store._insert_rows, []

    def insert(conn: sqlite3.Connection, rows: list[tuple]) -> float:
        if failing:
            failing.clear()
            raise sqlite3.OperationalError("disk I/O error")
        return real(conn, rows)

    monkeypatch.setattr(store, "_insert_rows", insert)
    led = await Ledger.open(path)

    async def burst(count: int, tag: str) -> list[bytes]:
        # appenders that start together: one batch, committed on the commit thread
        results = await asyncio.gather(
            *(led.append([register(f"a{i % 5}", f"{tag}{i}")], actor="t") for i in range(count)),
            return_exceptions=True,
        )
        return [r[0].body for r in results if not isinstance(r, BaseException)]

    bodies = await burst(20, "x")
    assert len(bodies) == 20 and max(led.batch_sizes) > 1
    failing.append(True)
    assert await burst(40, "lost") == []  # leaves 20..59, completing nodes up to 48
    assert led.tree == reference(bodies)
    bodies += await burst(10, "y")
    assert led.tree == reference(bodies)
    assert await led.read_tree(root_at, len(bodies)) == reference(bodies).root()
    await led.close()
    table = rows(path, "SELECT level, idx, hash FROM merkle_nodes")
    assert {(level, idx): h for level, idx, h in table} == stored_nodes(bodies)
