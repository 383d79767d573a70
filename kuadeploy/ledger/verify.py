"""Chain verification of a ledger file, full or incremental from a trusted point.

The trusted point (seq, hash) is what an earlier run verified. Incremental runs
trust the prefix up to it — after checking the row there still carries that
hash — and check everything after. A ledger shorter than the trusted point has
lost its tail.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from kuadeploy.files import write_atomic
from kuadeploy.ledger import reading
from kuadeploy.ledger.chain import GENESIS, Head, VerifyResult, verify_rows


class TrustedPoint(msgspec.Struct):
    seq: int
    hash: str  # hex


def verify_ledger(conn: sqlite3.Connection, start: Head = GENESIS) -> VerifyResult:
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
    return verify_rows(reading.iter_rows(conn, start.seq), start)


def trusted_path(data_dir: str) -> Path:
    return Path(data_dir) / "audit" / "verified.json"


def load_trusted(data_dir: str) -> Head:
    try:
        point = msgspec.json.decode(trusted_path(data_dir).read_bytes(), type=TrustedPoint)
    except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
        return GENESIS
    return Head(point.seq, bytes.fromhex(point.hash))


def save_trusted(data_dir: str, head: Head) -> None:
    write_atomic(
        trusted_path(data_dir), msgspec.json.encode(TrustedPoint(head.seq, head.hash.hex()))
    )
