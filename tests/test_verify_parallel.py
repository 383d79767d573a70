"""The parallel verifier gives the sequential verifier's answer, row for row, for
every kind of tampering — at chunk boundaries too, where it could go wrong."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from kuadeploy.audit import checkpoints
from kuadeploy.ledger import GENESIS, Head, processes, reading, verify
from tests.support import fill_mixed_ledger, unprotect

N = 60  # four chunks of 15: boundaries after rows 15, 30 and 45
WORKERS = 4


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    fill_mixed_ledger(path, N)
    return path


def _body(conn: sqlite3.Connection, seq: int) -> bytes:
    return conn.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()[0]


def flip_body(seq: int):
    def apply(conn: sqlite3.Connection) -> None:
        body = bytearray(_body(conn, seq))
        body[len(body) // 2] ^= 0x01
        conn.execute("UPDATE events SET body = ? WHERE seq = ?", (bytes(body), seq))

    return apply


def change_hash(seq: int):
    return lambda conn: conn.execute("UPDATE events SET hash = zeroblob(32) WHERE seq = ?", (seq,))


def delete(*seqs: int):
    def apply(conn: sqlite3.Connection) -> None:
        for seq in seqs:
            conn.execute("DELETE FROM events WHERE seq = ?", (seq,))

    return apply


def swap(a: int, b: int):
    def apply(conn: sqlite3.Connection) -> None:
        body_a, body_b = _body(conn, a), _body(conn, b)
        conn.execute("UPDATE events SET body = ? WHERE seq = ?", (body_b, a))
        conn.execute("UPDATE events SET body = ? WHERE seq = ?", (body_a, b))

    return apply


def set_column(column: str, value: str, seq: int):
    return lambda conn: conn.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", (value, seq))


def forge_tail(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO events (seq, stream, version, type, ts, body, hash) "
        "SELECT seq + 1, stream, version + 1, type, ts, body, hash FROM events WHERE seq = ?",
        (N,),
    )


TAMPERS = {
    "none": lambda conn: None,
    **{f"body {s}": flip_body(s) for s in (1, 7, 15, 16, 30, 31, 45, 60)},
    **{f"hash {s}": change_hash(s) for s in (1, 14, 15, 16, 30, 46, 60)},
    **{f"delete {s}": delete(s) for s in (2, 15, 16, 30, 31, 45, 46, 60)},
    "delete 14+15": delete(14, 15),
    "delete 15+16": delete(15, 16),
    "delete 15..31": delete(*range(15, 32)),
    "delete 29+31": delete(29, 31),
    **{f"type {s}": set_column("type", "AppRemoved", s) for s in (1, 15, 16, 46)},
    **{f"ts {s}": set_column("ts", "2000-01-01T00:00:00.000000Z", s) for s in (2, 15, 16, 60)},
    "swap 15/16": swap(15, 16),
    "swap 10/40": swap(10, 40),
    "forged tail": forge_tail,
}


@pytest.mark.parametrize("name", list(TAMPERS))
@pytest.mark.parametrize("from_seq", [0, 10])
def test_parallel_equals_sequential(pristine, tmp_path, monkeypatch, name, from_seq):
    path = tmp_path / "ledger.db"
    shutil.copy(pristine, path)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        unprotect(conn)
        start = GENESIS
        if from_seq:
            start = Head(from_seq, conn.execute(
                "SELECT hash FROM events WHERE seq = ?", (from_seq,)).fetchone()[0])  # fmt: skip
        TAMPERS[name](conn)
    monkeypatch.setattr(verify, "PARALLEL_ROWS", 1)
    with closing(reading.open_readonly(str(path))) as conn:
        sequential = verify.verify_ledger(conn, start, workers=1)
        parallel = verify.verify_ledger(conn, start, workers=WORKERS)
    assert parallel == sequential
    # deleting the last row is truncation: only a signed checkpoint sees that; an
    # incremental run trusts the prefix it verified before
    unseen = {"none", "delete 60"} | (
        {"body 1", "body 7", "hash 1", "delete 2", "type 1", "ts 2"} if from_seq else set()
    )
    assert sequential.ok == (name in unseen), sequential


def test_chunks_really_run_in_other_processes(pristine, monkeypatch):
    """Without the split, this would pass on the sequential path: count the chunks."""
    calls: list[tuple] = []
    real = verify._verify_parallel

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(verify, "PARALLEL_ROWS", 1)
    monkeypatch.setattr(verify, "_verify_parallel", spy)
    with closing(reading.open_readonly(str(pristine))) as conn:
        result = verify.verify_ledger(conn, workers=3)
    assert result.ok and result.events == N and result.head.seq == N
    assert len(calls) == 1 and calls[0][3] == 3


def test_spawned_workers_when_other_threads_run(pristine, monkeypatch):
    """A server verifies from a thread: no fork there, and the same answer."""
    monkeypatch.setattr(verify, "PARALLEL_ROWS", 1)
    monkeypatch.setattr(processes.threading, "active_count", lambda: 3)
    methods: list[str] = []
    real = processes.multiprocessing.get_context
    monkeypatch.setattr(
        processes.multiprocessing, "get_context", lambda m: methods.append(m) or real(m)
    )
    with closing(reading.open_readonly(str(pristine))) as conn:
        result = verify.verify_ledger(conn, workers=2)
    assert methods == ["spawn"]
    assert result.ok and result.events == N


@pytest.mark.parametrize("name", list(TAMPERS))
def test_startup_scan_in_two_processes_equals_one(pristine, tmp_path, monkeypatch, name):
    """The start-up scan checks the chain in a helper process while this one builds
    the tree: the same roots, tree and chain breaks as the single pass."""
    path = tmp_path / "ledger.db"
    shutil.copy(pristine, path)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        unprotect(conn)
        TAMPERS[name](conn)
    sizes, accepted = [10, 30, 59], {16}
    with closing(reading.open_readonly(str(path))) as conn:
        monkeypatch.setattr(checkpoints, "PARALLEL_SCAN_ROWS", 10**9)
        one = checkpoints.scan_ledger(conn, sizes, check_chain=True, accepted_breaks=accepted)
        monkeypatch.setattr(checkpoints, "PARALLEL_SCAN_ROWS", 1)
        pools: list[int] = []
        real = checkpoints.process_pool
        monkeypatch.setattr(checkpoints, "process_pool", lambda n: pools.append(n) or real(n))
        two = checkpoints.scan_ledger(conn, sizes, check_chain=True, accepted_breaks=accepted)
    assert two == one
    assert pools == [1]  # the chain really was checked by a helper process
    # row 16's breaks are accepted: a changed body or column there breaks nothing
    # else, a changed hash also breaks the link to row 17
    unseen = ("none", "delete 60", "body 16", "type 16", "ts 16")
    assert (one.chain_breaks == []) == (name in unseen)
    if name.startswith(("type ", "ts ")) and name not in unseen:
        column, seq = name.split()
        assert [(b.seq, b.reason.split()[:2]) for b in one.chain_breaks] == [
            (int(seq), [column, "column"])
        ]


def test_without_helper_processes_both_fall_back_to_one(pristine, monkeypatch, caplog):
    """Processes refused (limits, no /dev/shm): the same answers, from this process."""

    def refused(workers: int):
        raise OSError("fork refused")

    monkeypatch.setattr(verify, "PARALLEL_ROWS", 1)
    monkeypatch.setattr(verify, "process_pool", refused)
    monkeypatch.setattr(checkpoints, "PARALLEL_SCAN_ROWS", 1)
    monkeypatch.setattr(checkpoints, "process_pool", refused)
    with closing(reading.open_readonly(str(pristine))) as conn:
        result = verify.verify_ledger(conn, workers=4)
        scan = checkpoints.scan_ledger(conn, [N], check_chain=True)
    assert result.ok and result.events == N
    assert scan.tree.size == N and scan.chain_breaks == [] and N in scan.roots
    assert "helper processes failed" in caplog.text and "the helper failed" in caplog.text
