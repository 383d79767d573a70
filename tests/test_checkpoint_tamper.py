"""Tampering after a checkpoint was signed: every class of tests/test_tamper.py, plus
truncation of the tail and a complete rewrite with a valid new chain, is caught by
the offline verifier against the earlier checkpoint and refused at start-up; the
explicit override accepts the ledger, rebuilds its tree and records that it did."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from kuadeploy import events as ev
from kuadeploy.audit.checkpoints import scan_ledger
from kuadeploy.audit.keys import load_signer
from kuadeploy.audit.merkle import root_at
from kuadeploy.audit.note import Signer, open_checkpoint, sign_checkpoint
from kuadeploy.audit.startup import LedgerRewound, open_checked
from kuadeploy.config import Config
from kuadeploy.ledger import Ledger, NewEvent, SchemaError, reading
from tests.support import register, run_cli
from tests.test_tamper import rechain_from, row, tamper

N = 12


def config(data_dir: Path) -> Config:
    return Config(data_dir=str(data_dir), checkpoint_interval_s=0.0)


def sample(i: int) -> NewEvent:
    if i % 3 == 2:
        return NewEvent(f"deploy/d{i}", ev.DeployRequested(app="web", trigger="api"))
    return register(f"app{i % 4}", f"b{i}")


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path, str]:
    """A data dir of N events with a checkpoint of size N; a copy of that checkpoint
    kept elsewhere (as an auditor or a witness would); the verifier key."""
    data_dir = tmp_path / "data"

    async def fill() -> None:
        opened = await open_checked(config(data_dir))
        for i in range(N):
            await opened.ledger.append([sample(i)], actor="kavi")
        await opened.ledger.close()

    asyncio.run(fill())
    earlier = tmp_path / "checkpoint-at-12"
    shutil.copy(data_dir / "checkpoints" / "latest", earlier)
    assert earlier.read_text().split("\n")[1] == str(N)
    return data_dir, earlier, load_signer(config(data_dir)).vkey


# --- the tampering ----------------------------------------------------------------------


def body_byte_changed(d: Path) -> None:
    body, _ = row(d, 5)
    tamper(d, ("UPDATE events SET body = ? WHERE seq = 5", (body.replace(b'"b4"', b'"b5"'),)))


def body_changed_and_rechained(d: Path) -> None:
    body_byte_changed(d)
    rechain_from(d, 5)


def hash_changed(d: Path) -> None:
    _, hash_ = row(d, 7)
    forged = bytes([hash_[0] ^ 1]) + hash_[1:]
    tamper(d, ("UPDATE events SET hash = ? WHERE seq = 7", (forged,)))


def middle_row_deleted(d: Path) -> None:
    tamper(d, ("DELETE FROM events WHERE seq = 6", ()))


def middle_row_deleted_renumbered_rechained(d: Path) -> None:
    middle_row_deleted(d)
    tamper(d, *(("UPDATE events SET seq = ? WHERE seq = ?", (s - 1, s)) for s in range(7, N + 1)))
    rechain_from(d, 6)


def bodies_swapped_and_rechained(d: Path) -> None:
    body4, _ = row(d, 4)
    body9, _ = row(d, 9)
    tamper(
        d,
        ("UPDATE events SET body = ? WHERE seq = 4", (body9,)),
        ("UPDATE events SET body = ? WHERE seq = 9", (body4,)),
    )
    rechain_from(d, 4)


def forged_row_at_the_tail(d: Path) -> None:
    body, _ = row(d, N)
    forged = body.replace(f'"seq":{N},'.encode(), f'"seq":{N + 1},'.encode())
    tamper(
        d,
        (
            "INSERT INTO events (seq, stream, version, type, ts, body, hash) "
            "VALUES (?, 'app/x', 1, 'AppRegistered', '2026-01-01', ?, ?)",
            (N + 1, forged, hashlib.sha256(forged).digest()),
        ),
    )


def undecodable_body_rechained(d: Path) -> None:
    body, _ = row(d, 8)
    tamper(d, ("UPDATE events SET body = ? WHERE seq = 8", (body.replace(b'"b7"', b"7"),)))
    rechain_from(d, 8)


def type_column_changed(d: Path) -> None:
    tamper(d, ("UPDATE events SET type = 'AppRemoved' WHERE seq = 1", ()))


def ts_column_changed(d: Path) -> None:
    tamper(d, ("UPDATE events SET ts = '2000-01-01T00:00:00.000000Z' WHERE seq = 2", ()))


def tail_truncated(d: Path) -> None:
    tamper(d, ("DELETE FROM events WHERE seq > ?", (N - 3,)))


def rewritten_with_a_valid_new_chain(d: Path) -> None:
    """A new database from scratch: other events, a valid chain, more of them,
    and no checkpoints of its own."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{d / 'ledger.db'}{suffix}").unlink(missing_ok=True)

    async def forge() -> None:
        led = await Ledger.open(str(d / "ledger.db"))
        for i in range(N + 3):
            await led.append([register(f"evil{i % 4}", f"x{i}")], actor="mallory")
        await led.close()

    asyncio.run(forge())


CHAIN = "FAILED at seq"
ROOT = f"FAILED: root at size {N} differs from the checkpoint (rewritten)"
CASES: list[tuple[Callable[[Path], None], str, str]] = [
    # (tamper, what the offline verifier prints, what start-up refuses with)
    (body_byte_changed, f"{CHAIN} 5: hash mismatch", "ledger chain broken at seq 5: hash mismatch"),
    (body_changed_and_rechained, ROOT, f"root at size {N} differs from the mirrored"),
    (hash_changed, f"{CHAIN} 7: hash mismatch", "ledger chain broken at seq 7: hash mismatch"),
    (middle_row_deleted, f"{CHAIN} 6: seq gap", "ledger chain broken at seq 6: row missing"),
    (
        middle_row_deleted_renumbered_rechained,
        f"{CHAIN} 6: body seq 7 != row seq 6",
        f"ledger has {N - 1} events, mirrored checkpoint",
    ),
    # the rows' type and ts columns stay: the scan sees that before the root
    (bodies_swapped_and_rechained, f"{CHAIN} 4: body seq 9", "broken at seq 4: type column"),
    (forged_row_at_the_tail, f"{CHAIN} {N + 1}: hash mismatch", f"broken at seq {N + 1}"),
    (undecodable_body_rechained, f"{CHAIN} 8: body does not decode", f"root at size {N} differs"),
    # unhashed columns: neither the chain nor the tree changes, the scan compares them
    (
        type_column_changed,
        f"{CHAIN} 1: type column 'AppRemoved' differs from the body's 'AppRegistered'",
        "ledger chain broken at seq 1: type column 'AppRemoved' differs",
    ),
    (
        ts_column_changed,
        f"{CHAIN} 2: ts column '2000-01-01T00:00:00.000000Z' differs from the body's",
        "ledger chain broken at seq 2: ts column '2000-01-01T00:00:00.000000Z' differs",
    ),
    (
        tail_truncated,
        f"FAILED: ledger has {N - 3} events, checkpoint covers {N} (truncated)",
        f"ledger has {N - 3} events, mirrored checkpoint",
    ),
    (rewritten_with_a_valid_new_chain, ROOT, f"root at size {N} differs from the mirrored"),
]

IDS = [forge.__name__ for forge, _, _ in CASES]


def offline(data_dir: Path, checkpoint: Path, vkey: str):
    return run_cli(
        "audit", "verify", "--full", "--data-dir", str(data_dir),
        "--checkpoint", str(checkpoint), "--pubkey", vkey,
    )  # fmt: skip


def test_the_untampered_ledger_verifies_against_its_checkpoint(signed):
    data_dir, earlier, vkey = signed
    proc = offline(data_dir, earlier, vkey)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ok: checkpoint {load_signer(config(data_dir)).name} of size {N}" in proc.stdout


@pytest.mark.parametrize(("forge", "offline_says", "startup_says"), CASES, ids=IDS)
def test_caught_offline_and_at_start_up(signed, forge, offline_says, startup_says):
    data_dir, earlier, vkey = signed
    forge(data_dir)

    proc = offline(data_dir, earlier, vkey)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert offline_says in proc.stdout

    with pytest.raises(LedgerRewound) as refused:
        asyncio.run(open_checked(config(data_dir)))
    message = str(refused.value)
    assert startup_says in message
    assert "Refusing to start" in message and "--accept-ledger-rewind" in message


@pytest.mark.parametrize(("forge", "offline_says", "startup_says"), CASES, ids=IDS)
def test_the_override_accepts_records_and_rebuilds(signed, forge, offline_says, startup_says):
    data_dir, earlier, _ = signed
    forge(data_dir)
    old = open_checkpoint(earlier.read_text(), [load_signer(config(data_dir)).verifier])

    async def override() -> None:
        if forge is middle_row_deleted:  # a hole in the seqs: no tree to accept
            with pytest.raises(SchemaError, match="a seq gap"):
                await open_checked(config(data_dir), allow_rewind=True)
            return
        opened = await open_checked(config(data_dir), allow_rewind=True)
        led, event = opened.ledger, opened.overridden
        assert event is not None and event.event.stream == "system"
        data = event.event.data
        assert isinstance(data, ev.CheckpointOverridden)
        assert startup_says in data.reason
        assert (data.old_size, data.old_root) == (old.size, old.root.hex())
        conn = reading.open_readonly(str(data_dir / "ledger.db"))
        before = scan_ledger(conn, [event.seq - 1]).roots[event.seq - 1]
        whole = scan_ledger(conn, []).tree
        conn.close()
        assert (data.new_size, data.new_root) == (event.seq - 1, before.hex())
        # The node cache matches the events again, and the new head is signed.
        assert led.tree == whole
        for size in range(1, whole.size + 1):
            assert await led.read_tree(root_at, size) == scan_root(data_dir, size)
        assert opened.checkpointer.latest.size == whole.size
        await led.append([register("after")], actor="kavi")
        await led.close()
        # From now on the ledger starts without the flag: the new lineage holds.
        opened = await open_checked(config(data_dir))
        assert opened.overridden is None
        await opened.ledger.close()

    asyncio.run(override())


def scan_root(data_dir: Path, size: int) -> bytes:
    conn = reading.open_readonly(str(data_dir / "ledger.db"))
    try:
        return scan_ledger(conn, [size]).roots[size]
    finally:
        conn.close()


# --- the checkpoint itself ------------------------------------------------------------------


def test_a_checkpoint_signed_by_another_key_is_rejected(signed):
    data_dir, earlier, _ = signed
    mallory = Signer.generate(load_signer(config(data_dir)).name)  # same name, other key
    proc = offline(data_dir, earlier, mallory.vkey)
    assert proc.returncode == 1
    assert "FAILED: checkpoint signature does not verify with the given key" in proc.stdout
    # And at start-up: a mirror re-signed by another key is not ours.
    cp = open_checkpoint(earlier.read_text(), [load_signer(config(data_dir)).verifier])
    (data_dir / "checkpoints" / "latest").write_text(sign_checkpoint(cp, mallory))
    with pytest.raises(LedgerRewound, match="does not verify with our key"):
        asyncio.run(open_checked(config(data_dir)))


@pytest.mark.parametrize(
    ("old", "new"),
    [(f"\n{N}\n", f"\n{N - 1}\n"), ("kuadeploy/", "kuadeploy-x/"), ("=\n\n", "=\nextra\n\n")],
)
def test_a_checkpoint_with_its_text_changed_is_rejected(signed, old, new):
    data_dir, earlier, vkey = signed
    changed = earlier.read_text().replace(old, new, 1)
    assert changed != earlier.read_text()
    earlier.write_text(changed)
    proc = offline(data_dir, earlier, vkey)
    assert proc.returncode == 1
    assert "FAILED: checkpoint signature does not verify with the given key" in proc.stdout
    shutil.copy(earlier, data_dir / "checkpoints" / "latest")
    with pytest.raises(LedgerRewound, match=r"mirrored checkpoint .* does not verify"):
        asyncio.run(open_checked(config(data_dir)))


def test_a_later_checkpoint_than_the_ledger_is_caught_before_any_tampering(signed, tmp_path):
    """An auditor holding a newer checkpoint than a restored backup: truncated."""
    data_dir, _, vkey = signed
    backup = tmp_path / "backup"
    shutil.copytree(data_dir, backup)

    async def more() -> None:
        opened = await open_checked(config(data_dir))
        await opened.ledger.append([register("late")], actor="kavi")
        await opened.ledger.close()

    asyncio.run(more())
    newer = data_dir / "checkpoints" / "latest"
    proc = offline(backup, newer, vkey)
    assert proc.returncode == 1
    assert f"FAILED: ledger has {N} events, checkpoint covers {N + 1} (truncated)" in proc.stdout


def test_checkpoint_and_pubkey_go_together(signed):
    data_dir, earlier, _ = signed
    proc = run_cli("audit", "verify", "--data-dir", str(data_dir), "--checkpoint", str(earlier))
    assert proc.returncode == 2 and "--checkpoint and --pubkey go together" in proc.stderr


def test_checkpoints_table_keeps_only_what_the_ledger_contains_after_an_override(signed):
    data_dir, _, _ = signed
    tail_truncated(data_dir)

    async def go() -> None:
        opened = await open_checked(config(data_dir), allow_rewind=True)
        await opened.ledger.close()

    asyncio.run(go())
    conn = sqlite3.connect(data_dir / "ledger.db")
    sizes = [s for (s,) in conn.execute("SELECT size FROM checkpoints ORDER BY size")]
    conn.close()
    assert max(sizes) == N - 3 + 1, "the override event, signed"
    assert all(s <= N - 3 or s == N - 2 for s in sizes)
    for size in sizes:
        stored = sqlite3.connect(data_dir / "ledger.db")
        (root,) = stored.execute("SELECT root FROM checkpoints WHERE size = ?", (size,)).fetchone()
        stored.close()
        assert root == scan_root(data_dir, size)


def test_an_accepted_chain_break_does_not_excuse_a_new_one(signed):
    data_dir, _, _ = signed
    hash_changed(data_dir)  # breaks the links at 7 and 8

    async def override_then_restart() -> None:
        opened = await open_checked(config(data_dir), allow_rewind=True)
        assert opened.overridden.event.data.chain_breaks == [7, 8]
        await opened.ledger.close()
        opened = await open_checked(config(data_dir))  # accepted: starts plainly
        await opened.ledger.close()

    asyncio.run(override_then_restart())
    tamper(data_dir, ("UPDATE events SET hash = ? WHERE seq = 3", (bytes(32),)))
    with pytest.raises(LedgerRewound, match="ledger chain broken at seq 3: hash mismatch"):
        asyncio.run(open_checked(config(data_dir)))
