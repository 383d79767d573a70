"""Synchronous, read-only access for bulk work: verify, rebuild, point-in-time.

Bulk passes over a million rows run in one thread with a plain sqlite3
connection and large fetches; per-row awaits would cost more than the work.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from urllib.parse import quote

from kuadeploy.ledger.chain import GENESIS, Head, Row, UnreadableRow
from kuadeploy.ledger.schema import SchemaError, check_readable

_FETCH = 4096


def open_readonly(path: str) -> sqlite3.Connection:
    if not os.path.exists(path):
        raise SchemaError(f"{path}: no ledger here")
    try:
        try:
            return _open(path, "mode=ro")
        except sqlite3.OperationalError:
            # A WAL ledger on read-only media (a backup, a `:ro` volume): SQLite cannot
            # make the -shm file there. With no -wal file there is no writer either
            # (one would have made it), so the file can be read as immutable.
            if os.path.exists(f"{path}-wal") or os.access(os.path.dirname(path) or ".", os.W_OK):
                raise
            return _open(path, "mode=ro&immutable=1")
    except sqlite3.DatabaseError as exc:  # "file is not a database", "unable to open…"
        raise SchemaError(f"{path}: cannot read the ledger: {exc}") from None


def _open(path: str, params: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{quote(path)}?{params}", uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        check_readable(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def iter_rows(conn: sqlite3.Connection, after: int = 0, until: int | None = None) -> Iterator[Row]:
    """(seq, stream, version, type, ts, body, hash) for after < seq <= until, in seq order."""
    sql = "SELECT seq, stream, version, type, ts, body, hash FROM events WHERE seq > ?"
    args: tuple = (after,)
    if until is not None:
        sql += " AND seq <= ?"
        args = (after, until)
    cur = conn.execute(sql + " ORDER BY seq", args)
    try:
        while rows := cur.fetchmany(_FETCH):
            yield from rows
            after = rows[-1][0]
    except sqlite3.OperationalError as exc:  # a text column that is not UTF-8, say
        why = str(exc).partition(" with text")[0]  # not the undecodable bytes themselves
        raise UnreadableRow(_first_unreadable(conn, after), why) from None


def _first_unreadable(conn: sqlite3.Connection, after: int) -> int:
    """The first row after `after` that cannot be read whole (its seq always can)."""
    while True:
        row = conn.execute("SELECT seq FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (after,))
        seq = row.fetchone()[0]
        try:
            conn.execute("SELECT * FROM events WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.OperationalError:
            return seq
        after = seq


def iter_bodies(
    conn: sqlite3.Connection,
    after: int,
    until: int | None = None,
    types: Sequence[str] | None = None,
) -> Iterator[bytes]:
    """Bodies with after < seq <= until in seq order, optionally only of some event
    types (filtered by the indexed column, without decoding). Always bytes: a body
    some tool stored as TEXT reads as its UTF-8 (the verifier names such rows)."""
    sql = "SELECT CAST(body AS BLOB) FROM events WHERE seq > ?"
    args: list = [after]
    if until is not None:
        sql += " AND seq <= ?"
        args.append(until)
    if types:
        sql += f" AND type IN ({','.join('?' * len(types))})"
        args.extend(types)
    cur = conn.execute(sql + " ORDER BY seq", args)
    while rows := cur.fetchmany(_FETCH):
        for (body,) in rows:
            yield body


def read_head(conn: sqlite3.Connection) -> Head:
    row = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    return Head(row[0], row[1]) if row else GENESIS


def row_at(conn: sqlite3.Connection, seq: int) -> tuple[str, bytes] | None:
    """(ts, hash) of the event at seq."""
    return conn.execute("SELECT ts, hash FROM events WHERE seq = ?", (seq,)).fetchone()


def seq_at_time(conn: sqlite3.Connection, ts: str) -> int:
    row = conn.execute("SELECT MAX(seq) FROM events WHERE ts <= ?", (ts,)).fetchone()
    return row[0] or 0


def first_ts(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT ts FROM events WHERE seq = 1").fetchone()
    return row[0] if row else None


def iter_snapshots(
    conn: sqlite3.Connection, fmt: int, at_most: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """(seq, state) of usable snapshots, newest first: right format, and the chain
    hash stored with the snapshot still equals the ledger's hash at that seq."""
    sql = (
        "SELECT s.seq, s.state FROM snapshots s JOIN events e ON e.seq = s.seq "
        "WHERE s.format = ? AND s.hash = e.hash"
    )
    args: tuple = (fmt,)
    if at_most is not None:
        sql += " AND s.seq <= ?"
        args = (fmt, at_most)
    cur = conn.execute(sql + " ORDER BY s.seq DESC", args)
    while row := cur.fetchone():
        yield row


def iter_events_of(
    conn: sqlite3.Connection, after: int, until: int, types: Sequence[str]
) -> Iterator[tuple[int, bytes, bytes]]:
    """(seq, body, hash) of events of `types` with after < seq <= until, in seq order."""
    sql = (
        "SELECT seq, body, hash FROM events WHERE seq > ? AND seq <= ? "
        f"AND type IN ({','.join('?' * len(types))}) ORDER BY seq"
    )
    cur = conn.execute(sql, [after, until, *types])
    while rows := cur.fetchmany(_FETCH):
        yield from rows


def iter_stream_bodies(conn: sqlite3.Connection, stream: str) -> Iterator[bytes]:
    cur = conn.execute("SELECT body FROM events WHERE stream = ? ORDER BY version", (stream,))
    while rows := cur.fetchmany(_FETCH):
        for (body,) in rows:
            yield body
