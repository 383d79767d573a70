"""Chain verification of a ledger file, full or incremental from a trusted point.

The trusted point (seq, hash) is what an earlier run verified. Incremental runs
trust the prefix up to it — after checking the row there still carries that
hash — and check everything after. A ledger shorter than the trusted point has
lost its tail.

A long range is checked by one process per core: every row's check needs only
its own bytes and the stored hash of the row before it, so the range splits into
chunks that start from the stored hash at their lower bound. A chunk whose rows
do not end exactly at its upper bound reports the gap; the first bad chunk, in
seq order, is the answer, so the result is the sequential verifier's, row for
row. Memory stays flat: each process streams its chunk.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from pathlib import Path

import msgspec

from kuadeploy.files import write_atomic
from kuadeploy.ledger import reading
from kuadeploy.ledger.chain import GENESIS, Head, VerifyResult, verify_rows
from kuadeploy.ledger.processes import file_of, process_pool
from kuadeploy.progress import Progress

log = logging.getLogger(__name__)


class TrustedPoint(msgspec.Struct):
    seq: int
    hash: str  # hex


def verify_ledger(
    conn: sqlite3.Connection,
    start: Head = GENESIS,
    workers: int | None = None,
    progress: Progress | None = None,
) -> VerifyResult:
    """The chain from `start` to the head; `workers` processes (default: one per core)
    for long ranges."""
    (low,) = conn.execute("SELECT MIN(seq) FROM events").fetchone()
    if low is not None and low < 1:  # below every range read from here on
        reason = f"row at seq {low}: seqs start at 1"
        return VerifyResult(ok=False, events=0, head=GENESIS, first_bad_seq=low, reason=reason)
    if start.seq > 0:
        row = reading.row_at(conn, start.seq)
        if row is None:
            head = reading.read_head(conn)
            return VerifyResult(
                ok=False,
                events=0,
                head=head,
                first_bad_seq=head.seq + 1,
                reason=f"ledger ends at seq {head.seq}, before the verified seq {start.seq}",
            )
        if row[1] != start.hash:
            return VerifyResult(
                ok=False,
                events=0,
                head=start,
                first_bad_seq=start.seq,
                reason="hash at the last verified seq has changed",
            )
    head = reading.read_head(conn)
    workers = min(workers or os.cpu_count() or 1, (head.seq - start.seq) // PARALLEL_ROWS)
    path = file_of(conn)
    if progress is not None:
        progress.total = head.seq - start.seq
    if workers > 1 and path:
        try:
            return _verify_parallel(path, start, head.seq, workers, progress)
        except (OSError, BrokenProcessPool):  # no processes to be had: do it here
            log.warning("verifying in this process: helper processes failed", exc_info=True)
    rows = reading.iter_rows(conn, start.seq)
    return verify_rows(progress.counted(rows) if progress is not None else rows, start)


# Rows per process at least: below that, starting a process costs more than it saves.
PARALLEL_ROWS = 100_000


def _verify_parallel(
    path: str, start: Head, head: int, workers: int, progress: Progress | None
) -> VerifyResult:
    # With progress to show, smaller chunks, so that some end before all of them do.
    pieces = workers if progress is None else workers * 8
    step = (head - start.seq) // pieces
    lows = [start.seq + i * step for i in range(pieces)]
    highs: list[int | None] = [*lows[1:], None]  # the last chunk takes rows appended meanwhile
    with process_pool(workers) as pool:
        chunks = [
            pool.submit(verify_chunk, path, lo, hi, start.hash if lo == start.seq else None)
            for lo, hi in zip(lows, highs, strict=True)
        ]
        if progress is not None:
            done = 0
            for chunk in as_completed(chunks):
                done += chunk.result().events
                progress.update(done)
            progress.finish(done)
        results = [c.result() for c in chunks]
    events = 0
    for result in results:
        if not result.ok:
            return msgspec.structs.replace(result, events=events + result.events)
        events += result.events
    return VerifyResult(ok=True, events=events, head=results[-1].head)


def verify_chunk(path: str, lo: int, hi: int | None, lo_hash: bytes | None) -> VerifyResult:
    """Rows lo < seq <= hi, chained from `lo_hash` (else the stored hash of row lo)."""
    with closing(reading.open_readonly(path)) as conn:
        if lo_hash is None:
            row = reading.row_at(conn, lo)
            if row is None:  # the chunk before ends short of lo and reports this gap
                return VerifyResult(False, 0, Head(lo, b""), lo, f"seq gap: row {lo} missing")
            lo_hash = row[1]
        result = verify_rows(reading.iter_rows(conn, lo, hi), Head(lo, lo_hash))
        if result.ok and hi is not None and result.head.seq < hi:
            gap = result.head.seq + 1
            (found,) = conn.execute(
                "SELECT MIN(seq) FROM events WHERE seq > ?", (result.head.seq,)
            ).fetchone()
            reason = f"seq gap: row {gap} missing, found {found}"
            return VerifyResult(False, result.events, result.head, gap, reason)
        return result


def trusted_path(data_dir: str) -> Path:
    return Path(data_dir) / "audit" / "verified.json"


def load_trusted(data_dir: str) -> Head:
    try:
        point = msgspec.json.decode(trusted_path(data_dir).read_bytes(), type=TrustedPoint)
        return Head(point.seq, bytes.fromhex(point.hash))
    except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return GENESIS  # nothing usable recorded: verify from event 1


def save_trusted(data_dir: str, head: Head) -> None:
    write_atomic(
        trusted_path(data_dir), msgspec.json.encode(TrustedPoint(head.seq, head.hash.hex()))
    )
