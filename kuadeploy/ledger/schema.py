"""The ledger's SQLite schema, its version, and the pragmas every connection needs."""

from __future__ import annotations

import sqlite3

from kuadeploy.audit.merkle import SqliteNodeStore

# 1: events, snapshots. 2: merkle_nodes, checkpoints (CREATE IF NOT EXISTS: a
# version-1 file is migrated by running the whole DDL again).
SCHEMA_VERSION = 2

# stream/version/type/ts repeat what the body says; they exist for the UNIQUE
# constraint (optimistic concurrency) and for indexed reads. The verifier checks
# that they agree with the body.
DDL = """
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,
    stream  TEXT    NOT NULL,
    version INTEGER NOT NULL,
    type    TEXT    NOT NULL,
    ts      TEXT    NOT NULL,
    body    BLOB    NOT NULL,
    hash    BLOB    NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'ledger events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'ledger events are append-only'); END;
CREATE TABLE IF NOT EXISTS snapshots (
    seq    INTEGER PRIMARY KEY,
    hash   BLOB    NOT NULL,
    format INTEGER NOT NULL,
    state  BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    root BLOB    NOT NULL,
    note TEXT    NOT NULL,
    ts   TEXT    NOT NULL
);
"""
# The Merkle tree's perfect-subtree nodes (kuadeploy/ledger/tree.py): a cache, like
# the snapshots, derivable from the event bodies at any time.
DDL += SqliteNodeStore.DDL + ";\n"


class SchemaError(Exception):
    """The database cannot be used by this version of kuadeploy."""


def prepare(conn: sqlite3.Connection, path: str) -> None:
    """Set pragmas, create or check the schema. `conn` must be in autocommit mode."""
    conn.execute("PRAGMA busy_timeout = 10000")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise SchemaError(f"{path}: cannot switch to WAL journal mode (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{path}: ledger schema version {version} is newer than this kuadeploy "
            f"understands ({SCHEMA_VERSION}); upgrade kuadeploy, do not write to it"
        )
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        for statement in _statements(DDL):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")


def prepare_file(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        prepare(conn, path)
    finally:
        conn.close()


def check_readable(conn: sqlite3.Connection, path: str) -> None:
    """For read-only opens: refuse a newer schema, tolerate a missing one."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{path}: ledger schema version {version} is newer than this kuadeploy "
            f"understands ({SCHEMA_VERSION}); upgrade kuadeploy"
        )
    if version == 0:
        raise SchemaError(f"{path}: not a kuadeploy ledger (no schema)")


def _statements(script: str) -> list[str]:
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        joined = "\n".join(buf)
        if joined.rstrip().endswith(";") and sqlite3.complete_statement(joined):
            out.append(joined)
            buf = []
    return out
