"""Registry export at the head or at any past point (a seq or an RFC 3339 time)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from kuadeploy.entry import entry_to_builtins
from kuadeploy.ledger import reading
from kuadeploy.projector import registry_at
from projections.registry import Registry, live_entries, live_versions


class AtError(ValueError):
    """`at` names no point of this ledger (malformed, before event 1, beyond the head)."""


def canonical_time(text: str) -> str:
    """RFC 3339 with an offset -> the ledger's UTC form, comparable as text."""
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError as exc:
        raise AtError(f"not an RFC 3339 time: {text[:60]!r}") from exc
    if when.tzinfo is None:
        raise AtError(f"time {text[:60]!r} has no UTC offset (RFC 3339 needs one, e.g. Z)")
    try:  # 0001-01-01T00:00:00+01:00 is valid RFC 3339, yet its UTC day is in year 0
        utc = when.astimezone(UTC)
    except OverflowError:
        raise AtError(f"time {text[:60]!r} is outside the years 1 to 9999 in UTC") from None
    # isoformat pads the year to four digits (strftime's %Y does not), so it compares as text
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def resolve_at(conn: sqlite3.Connection, at: str, now: str) -> int:
    """The seq that `at` (a seq number or an RFC 3339 time) names."""
    head = reading.read_head(conn).seq
    text = at.strip()
    if text.isascii() and text.isdigit():  # not "²": str.isdigit alone takes it, int() not
        if len(text) > 19 or int(text) > head:
            raise AtError(f"seq {text[:40]} is beyond the head of the ledger ({head})")
        seq = int(text)
        if seq < 1:
            raise AtError("at must be a seq of 1 or more")
        return seq
    ts = canonical_time(at)
    first = reading.first_ts(conn)
    if first is None or ts < first:
        raise AtError(f"{at} is before the first event ({first or 'the ledger is empty'})")
    if ts > now:
        raise AtError(f"{at} is in the future")
    return reading.seq_at_time(conn, ts)


def render_export(registry: Registry, seq: int, ts: str | None, hash_: bytes) -> dict:
    return {
        "as_of": {"seq": seq, "ts": ts, "hash": hash_.hex()},
        "apps": {name: entry_to_builtins(e) for name, e in live_entries(registry).items()},
        "versions": live_versions(registry),
    }


def export_at(conn: sqlite3.Connection, seq: int) -> dict:
    row = reading.row_at(conn, seq) if seq > 0 else None
    ts, hash_ = row if row else (None, bytes(32))
    return render_export(registry_at(conn, seq), seq, ts, hash_)
