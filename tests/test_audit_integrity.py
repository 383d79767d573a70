"""Integrity audit: tampering the verifiers must name, and caches whose corruption
must not make an intact ledger look tampered with. Proofs are checked with the
small RFC 9162 verifier below, written from the RFC, not with kuadeploy's."""

from __future__ import annotations

import asyncio
import sqlite3
from hashlib import sha256
from pathlib import Path

import pytest

from kuadeploy.audit.startup import LedgerRewound, open_checked
from kuadeploy.config import Config
from tests.api_support import make_config, running
from tests.support import register, run_cli, unprotect

# --- RFC 9162 §2.1.3.2 and §2.1.4.2, independently ------------------------------------


def _node(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right).digest()


def _mth(bodies: list[bytes]) -> bytes:
    if not bodies:
        return sha256(b"").digest()
    if len(bodies) == 1:
        return sha256(b"\x00" + bodies[0]).digest()
    k = 1 << ((len(bodies) - 1).bit_length() - 1)
    return _node(_mth(bodies[:k]), _mth(bodies[k:]))


def inclusion_ok(index: int, size: int, body: bytes, proof: list[bytes], root: bytes) -> bool:
    if index >= size:
        return False
    fn, sn, r = index, size - 1, sha256(b"\x00" + body).digest()
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def consistency_ok(m: int, n: int, proof: list[bytes], old: bytes, new: bytes) -> bool:
    if m in (0, n):
        return not proof and (m == 0 or old == new)
    path = [old, *proof] if m & (m - 1) == 0 else list(proof)
    if not path:
        return False
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old and sr == new


# --- a signed data dir ----------------------------------------------------------------

N = 300


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """N registry events, checkpointed at N, server closed."""
    d = tmp_path / "data"

    async def fill() -> None:
        opened = await open_checked(Config(data_dir=str(d), checkpoint_interval_s=0.0))
        for i in range(N):
            await opened.ledger.append([register(f"app{i % 4}", f"b{i}")], actor="kavi")
        await opened.ledger.close()

    asyncio.run(fill())
    return d


def sql(d: Path, *statements: str) -> list:
    conn = sqlite3.connect(d / "ledger.db", isolation_level=None)
    unprotect(conn)
    out = [conn.execute(s).fetchall() for s in statements]
    conn.close()
    return out


def bodies_of(d: Path) -> list[bytes]:
    return [b for (b,) in sql(d, "SELECT body FROM events ORDER BY seq")[0]]


async def test_a_corrupt_merkle_cache_node_never_yields_proofs_that_fail(data_dir):
    """The ledger is intact; only a cached interior node (leaves 48..63, not on the
    right edge) is wrong. The start-up check must notice it, or every auditor asking
    for a proof of events 33..48 concludes the log was rewritten."""
    sql(data_dir, "UPDATE merkle_nodes SET hash = zeroblob(32) WHERE level = 4 AND idx = 3")
    bodies = bodies_of(data_dir)
    root = _mth(bodies)
    async with running(make_config(data_dir, checkpoint_interval_s=0.0)) as api:
        bad = []
        for seq in range(30, 52):
            q = f"seq={seq}&size={N}"
            status, doc, _ = await api.call("GET", f"/api/v1/audit/proof/inclusion?{q}")
            assert status == 200
            proof = [bytes.fromhex(h) for h in doc["hashes"]]
            if not inclusion_ok(seq - 1, N, bodies[seq - 1], proof, root):
                bad.append(("inclusion", seq))
            q = f"from={seq}&to={N}"
            status, doc, _ = await api.call("GET", f"/api/v1/audit/proof/consistency?{q}")
            assert status == 200
            proof = [bytes.fromhex(h) for h in doc["hashes"]]
            if not consistency_ok(seq, N, proof, _mth(bodies[:seq]), root):
                bad.append(("consistency", seq))
    assert bad == []


def verify_cli(d: Path, *flags: str):
    return run_cli("audit", "verify", "--full", "--data-dir", str(d), *flags)


async def start_up_refusal(d: Path) -> str:
    with pytest.raises(LedgerRewound) as refused:
        opened = await open_checked(Config(data_dir=str(d)))
        await opened.ledger.close()
    return str(refused.value)


async def test_a_body_stored_as_text_is_named_not_a_traceback(data_dir):
    """Same bytes, but SQLite TEXT where DESIGN §3 says BLOB: the server cannot use
    the row (its code hashes bytes), so every verifier names it instead of crashing."""
    async with running(make_config(data_dir, checkpoint_interval_s=0.0)) as api:
        sql(data_dir, "UPDATE events SET body = CAST(body AS TEXT) WHERE seq = 7")
        status, doc, _ = await api.call("GET", "/api/v1/audit/verify?full=1", role="reader")
        assert status == 200, doc
        assert (doc["ok"], doc["first_bad_seq"]) == (False, 7)
        assert "BLOB" in doc["reason"]
    proc = verify_cli(data_dir)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "FAILED at seq 7: body is stored as text, not as a BLOB" in proc.stdout
    assert "seq 7: body is stored as text" in await start_up_refusal(data_dir)


async def test_rows_before_seq_1_are_not_skipped(data_dir):
    """Seqs are 1, 2, 3, … (DESIGN §3). Rows inserted at seq 0 or below were never
    read by `audit verify`, which said ok, while start-up refused with "row 1
    missing" (it is not); both must name the row that is there."""
    sql(
        data_dir,
        "INSERT INTO events SELECT -3, 'app/app0', 999, type, ts, body, hash "
        "FROM events WHERE seq = 2",
    )
    proc = verify_cli(data_dir)
    assert proc.returncode == 1, proc.stdout
    assert "FAILED at seq -3:" in proc.stdout
    refusal = await start_up_refusal(data_dir)
    assert "seq -3" in refusal and "row missing" not in refusal


async def test_an_older_note_in_the_checkpoints_table_never_rolls_the_mirror_back(
    data_dir, tmp_path
):
    """Only the size and root of the table's last row are checked at start-up, yet
    its note was mirrored and served as it was. With nothing but write access to the
    database, an older genuine note (the table keeps them all) rolled the mirror on
    its other volume back, and then a ledger cut to that size started silently."""
    mirror = tmp_path / "other-volume" / "latest"
    mirror.parent.mkdir()
    (data_dir / "checkpoints" / "latest").rename(mirror)
    sql(
        data_dir,
        "UPDATE checkpoints SET note = (SELECT note FROM checkpoints ORDER BY size LIMIT 1) "
        f"WHERE size = {N}",
    )
    config = make_config(data_dir, checkpoint_interval_s=0.0, checkpoint_mirror=str(mirror))
    async with running(config) as api:
        status, note, _ = await api.call("GET", "/api/v1/audit/checkpoint", role="reader")
        assert status == 200 and note.decode().split("\n")[1] == str(N)
    assert mirror.read_text().split("\n")[1] == str(N)
    sql(data_dir, "DELETE FROM events WHERE seq > 10", "DELETE FROM checkpoints WHERE size > 10")
    with pytest.raises(Exception, match=f"covers {N} \\(truncated\\)"):
        async with running(config):
            pass
