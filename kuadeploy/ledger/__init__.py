"""The ledger: one append-only, hash-chained SQLite table of events (DESIGN §3)."""

from kuadeploy.ledger.chain import GENESIS, Head, VerifyResult, chain_hash, verify_rows
from kuadeploy.ledger.schema import SchemaError
from kuadeploy.ledger.store import ConflictError, Ledger, LedgerClosed, NewEvent, StoredEvent

__all__ = [
    "GENESIS",
    "ConflictError",
    "Head",
    "Ledger",
    "LedgerClosed",
    "NewEvent",
    "SchemaError",
    "StoredEvent",
    "VerifyResult",
    "chain_hash",
    "verify_rows",
]
