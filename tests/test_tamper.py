"""Tamper matrix on a real ledger file: `kuadeploy audit verify` names the first bad seq.

Truncation of the tail and a complete rewrite with a valid new chain need signed
checkpoints (tests/test_checkpoint*); a chain alone cannot see them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from tests.support import fill_mixed_ledger, run_cli, unprotect

N = 12


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    fill_mixed_ledger(tmp_path / "ledger.db", N)
    return tmp_path


def tamper(data_dir: Path, *statements: tuple[str, tuple]) -> None:
    conn = sqlite3.connect(data_dir / "ledger.db", isolation_level=None)
    unprotect(conn)
    for sql, args in statements:
        conn.execute(sql, args)
    conn.close()


def row(data_dir: Path, seq: int) -> tuple[bytes, bytes]:
    conn = sqlite3.connect(data_dir / "ledger.db")
    body, hash_ = conn.execute("SELECT body, hash FROM events WHERE seq = ?", (seq,)).fetchone()
    conn.close()
    return body, hash_


def rechain_from(data_dir: Path, seq: int) -> None:
    """What a careful forger does after editing a body: recompute every later hash."""
    conn = sqlite3.connect(data_dir / "ledger.db", isolation_level=None)
    prev = conn.execute("SELECT hash FROM events WHERE seq = ?", (seq - 1,)).fetchone()
    prev = prev[0] if prev else bytes(32)
    for s, body in conn.execute("SELECT seq, body FROM events WHERE seq >= ? ORDER BY seq", (seq,)):
        prev = hashlib.sha256(prev + body).digest()
        conn.execute("UPDATE events SET hash = ? WHERE seq = ?", (prev, s))
    conn.close()


def assert_fails_at(data_dir: Path, seq: int, reason: str, *flags: str) -> None:
    proc = run_cli("audit", "verify", "--data-dir", str(data_dir), *flags)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"FAILED at seq {seq}:" in proc.stdout
    assert reason in proc.stdout


def test_untampered_ledger_verifies(data_dir):
    proc = run_cli("audit", "verify", "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ok: {N} events verified from event 1; head seq {N}" in proc.stdout


def test_one_byte_of_a_body_changed(data_dir):
    body, _ = row(data_dir, 5)
    forged = body.replace(b'"b4"', b'"b5"')
    assert forged != body and len(forged) == len(body)
    tamper(data_dir, ("UPDATE events SET body = ? WHERE seq = 5", (forged,)))
    assert_fails_at(data_dir, 5, "hash mismatch")


def test_a_column_sqlite_cannot_read_as_text(data_dir):
    # a hash stored as TEXT is not UTF-8: reading the row failed in SQLite's
    # text decoding, and the verifier crashed with a traceback instead of naming it
    tamper(data_dir, ("UPDATE events SET hash = CAST(hash AS TEXT) WHERE seq = 6", ()))
    assert_fails_at(data_dir, 6, "row cannot be read: Could not decode to UTF-8 column 'hash'")
    proc = run_cli("audit", "verify", "--data-dir", str(data_dir), "--full", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["first_bad_seq"] == 6


def test_a_hash_changed(data_dir):
    _, hash_ = row(data_dir, 7)
    tamper(
        data_dir, ("UPDATE events SET hash = ? WHERE seq = 7", (bytes([hash_[0] ^ 1]) + hash_[1:],))
    )
    assert_fails_at(data_dir, 7, "hash mismatch")


def test_a_middle_row_deleted(data_dir):
    tamper(data_dir, ("DELETE FROM events WHERE seq = 6", ()))
    assert_fails_at(data_dir, 6, "seq gap: row 6 missing")


def test_a_middle_row_deleted_and_the_chain_recomputed(data_dir):
    tamper(data_dir, ("DELETE FROM events WHERE seq = 6", ()))
    # Even a renumbered, rehashed log keeps each body's own seq.
    conn = sqlite3.connect(data_dir / "ledger.db", isolation_level=None)
    for s in range(7, N + 1):
        conn.execute("UPDATE events SET seq = ? WHERE seq = ?", (s - 1, s))
    conn.close()
    rechain_from(data_dir, 6)
    assert_fails_at(data_dir, 6, "body seq 7 != row seq 6")


def test_two_rows_bodies_swapped(data_dir):
    body4, _ = row(data_dir, 4)
    body9, _ = row(data_dir, 9)
    tamper(
        data_dir,
        ("UPDATE events SET body = ? WHERE seq = 4", (body9,)),
        ("UPDATE events SET body = ? WHERE seq = 9", (body4,)),
    )
    assert_fails_at(data_dir, 4, "hash mismatch")
    rechain_from(data_dir, 4)
    assert_fails_at(data_dir, 4, "body seq 9 != row seq 4")


def test_a_forged_row_added_at_the_tail(data_dir):
    body, _ = row(data_dir, N)
    forged = body.replace(f'"seq":{N},'.encode(), f'"seq":{N + 1},'.encode())
    forged = forged.replace(b'"version":', b'"version":9')
    tamper(
        data_dir,
        (
            "INSERT INTO events (seq, stream, version, type, ts, body, hash) "
            "VALUES (?, 'app/x', 1, 'AppRegistered', '2026-01-01', ?, ?)",
            (N + 1, forged, hashlib.sha256(forged).digest()),
        ),
    )
    assert_fails_at(data_dir, N + 1, "hash mismatch")


def test_a_body_that_does_not_decode_is_reported_not_skipped(data_dir):
    body, _ = row(data_dir, 8)
    forged = body.replace(b'"branch":"b7"', b'"branch":7')
    assert forged != body
    tamper(data_dir, ("UPDATE events SET body = ? WHERE seq = 8", (forged,)))
    rechain_from(data_dir, 8)
    assert_fails_at(data_dir, 8, "body does not decode: Expected `str`, got `int`")


def test_a_type_column_that_differs_from_the_body(data_dir):
    """Unhashed, yet `registry_at` selects registry events by it: removing app0 at
    seq 1 changes the registry at that point."""
    tamper(data_dir, ("UPDATE events SET type = 'AppRemoved' WHERE seq = 1", ()))
    assert_fails_at(
        data_dir, 1, "type column 'AppRemoved' differs from the body's 'AppRegistered'", "--full"
    )


def test_a_ts_column_that_differs_from_the_body(data_dir):
    """Unhashed, yet `?at=<time>` finds its seq by it."""
    tamper(data_dir, ("UPDATE events SET ts = '2000-01-01T00:00:00.000000Z' WHERE seq = 3", ()))
    assert_fails_at(
        data_dir, 3, "ts column '2000-01-01T00:00:00.000000Z' differs from the body's", "--full"
    )


def test_full_rechecks_what_an_earlier_run_trusted(data_dir):
    assert run_cli("audit", "verify", "--data-dir", str(data_dir)).returncode == 0
    body, _ = row(data_dir, 2)
    forged = body.replace(b'"b1"', b'"b3"')
    assert forged != body
    tamper(data_dir, ("UPDATE events SET body = ? WHERE seq = 2", (forged,)))
    assert_fails_at(data_dir, 2, "hash mismatch", "--full")


def test_incremental_verify_sees_a_changed_hash_at_the_trusted_point(data_dir):
    assert run_cli("audit", "verify", "--data-dir", str(data_dir)).returncode == 0
    tamper(data_dir)
    rechain_from(data_dir, 1)  # unchanged bodies give the same hashes: still fine
    assert run_cli("audit", "verify", "--data-dir", str(data_dir)).returncode == 0
    body, _ = row(data_dir, 2)
    tamper(
        data_dir, ("UPDATE events SET body = ? WHERE seq = 2", (body.replace(b'"b1"', b'"x1"'),))
    )
    rechain_from(data_dir, 2)
    assert_fails_at(data_dir, N, "hash at the last verified seq has changed")


def test_json_output(data_dir):
    tamper(data_dir, ("DELETE FROM events WHERE seq = 2", ()))
    proc = run_cli("audit", "verify", "--data-dir", str(data_dir), "--json")
    assert proc.returncode == 1
    assert '"ok":false' in proc.stdout and '"first_bad_seq":2' in proc.stdout
