"""The hash chain, exactly as DESIGN §3 states it, and its verifier.

hash[n] = SHA-256(hash[n-1] || body[n]), hash[0] = 32 zero bytes. The verifier
works on the stored bytes only and stops at the first bad row with its reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import sha256
from typing import NamedTuple

import msgspec

from kuadeploy import events

GENESIS_HASH = bytes(32)


class Head(NamedTuple):
    seq: int
    hash: bytes


GENESIS = Head(0, GENESIS_HASH)


class VerifyResult(msgspec.Struct, frozen=True):
    ok: bool
    events: int  # rows checked in this run
    head: Head  # last good (seq, hash)
    first_bad_seq: int | None = None
    reason: str | None = None

    def to_json(self) -> dict:
        out: dict = {"ok": self.ok, "events": self.events}
        out["head"] = {"seq": self.head.seq, "hash": self.head.hash.hex()}
        if not self.ok:
            out["first_bad_seq"] = self.first_bad_seq
            out["reason"] = self.reason
        return out


def chain_hash(prev: bytes, body: bytes) -> bytes:
    return sha256(prev + body).digest()


# A row as stored: (seq, stream, version, type, ts, body, hash).
Row = tuple[int, str, int, str, str, bytes, bytes]


class UnreadableRow(Exception):
    """A row SQLite cannot hand over (a text column that is not UTF-8)."""

    def __init__(self, seq: int, why: str):
        super().__init__(f"row cannot be read: {why}")
        self.seq = seq


def verify_rows(rows: Iterable[Row], start: Head = GENESIS) -> VerifyResult:
    """Check rows that should follow `start`, in seq order.

    Reasons, in the order they are checked: a seq gap, a body that is not a BLOB, a
    hash mismatch, a body that does not decode with the typed schema, a body whose
    seq/stream/version differ from the row's, a type or ts column that differs from
    the body (unhashed, yet point-in-time reads select by them).
    """
    decode = events.decoder().decode
    # The decoded envelope's class is its type; a dict lookup is cheaper than the
    # Envelope.type property.
    type_of = {cls.Recorded: name for name, cls in events.EVENT_TYPES.items()}
    prev_seq, prev_hash = start
    n = 0
    try:
        for seq, stream, version, kind, ts, body, stored in rows:
            expected = prev_seq + 1
            if seq != expected:
                why = f"seq gap: row {expected} missing, found {seq}"
                return _bad(n, prev_seq, prev_hash, expected, why)
            try:
                computed = sha256(prev_hash + body).digest()
            except TypeError:  # what was hashed is bytes: a BLOB (DESIGN §3)
                storage = {str: "text", int: "integer", float: "real"}.get(type(body), "?")
                return _bad(n, prev_seq, prev_hash, seq, not_a_blob(storage))
            if computed != stored:
                return _bad(n, prev_seq, prev_hash, seq, "hash mismatch")
            try:
                ev = decode(body)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                return _bad(n, prev_seq, prev_hash, seq, f"body does not decode: {exc}")
            if ev.seq != seq:
                return _bad(n, prev_seq, prev_hash, seq, f"body seq {ev.seq} != row seq {seq}")
            if ev.stream != stream or ev.version != version:
                why = "body stream/version differ from the row's"
                return _bad(n, prev_seq, prev_hash, seq, why)
            if (problem := column_problem(kind, ts, type_of[type(ev)], ev.ts)) is not None:
                return _bad(n, prev_seq, prev_hash, seq, problem)
            prev_seq, prev_hash = seq, stored
            n += 1
    except UnreadableRow as exc:
        return _bad(n, prev_seq, prev_hash, exc.seq, str(exc))
    return VerifyResult(ok=True, events=n, head=Head(prev_seq, prev_hash))


def not_a_blob(storage: str) -> str:
    """Why a body of another SQLite storage class (`typeof`) than BLOB is a bad row."""
    return f"body is stored as {storage}, not as a BLOB"


def column_problem(kind: str, ts: str, body_kind: str, body_ts: str) -> str | None:
    """Why the unhashed type or ts column differs from the body's, if it does."""
    if kind != body_kind:
        return f"type column {kind!r} differs from the body's {body_kind!r}"
    if ts != body_ts:
        return f"ts column {ts!r} differs from the body's {body_ts!r}"
    return None


def _bad(n: int, seq: int, hash_: bytes, bad: int, reason: str) -> VerifyResult:
    return VerifyResult(ok=False, events=n, head=Head(seq, hash_), first_bad_seq=bad, reason=reason)
