"""Signed checkpoints on a live ledger: keys, signing cadence, consistency, the mirror,
and the bodies of the audit routes."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from itertools import pairwise
from pathlib import Path

import pytest

from kuadeploy.audit import checkpoints
from kuadeploy.audit.checkpointer import Checkpointer, CheckpointRefused
from kuadeploy.audit.keys import KeyFileError, create_signer, default_key_name, load_signer
from kuadeploy.audit.merkle import (
    EMPTY_ROOT,
    TreeState,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from kuadeploy.audit.note import Signer, is_valid_key_name, open_checkpoint
from kuadeploy.audit.startup import open_checked
from kuadeploy.config import Config
from kuadeploy.ledger import Ledger
from tests.support import register, run_cli


def config(data_dir: Path, **kw) -> Config:
    return Config(data_dir=str(data_dir), **{"checkpoint_interval_s": 0.0, **kw})


def table(data_dir: Path) -> list[tuple[int, bytes, str]]:
    conn = sqlite3.connect(data_dir / "ledger.db")
    try:
        return conn.execute("SELECT size, root, note FROM checkpoints ORDER BY size").fetchall()
    finally:
        conn.close()


def reference_root(bodies: list[bytes]) -> bytes:
    return TreeState().append([leaf_hash(b) for b in bodies])[0].root()


# --- keys ---------------------------------------------------------------------------------


def test_key_is_made_once_private_and_printed_by_pubkey(tmp_path):
    signer = load_signer(config(tmp_path))
    path = tmp_path / "keys" / "checkpoint.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signer.name == default_key_name()
    assert load_signer(config(tmp_path)).vkey == signer.vkey  # read back, not made again
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.key"]  # no temp file left
    proc = run_cli("audit", "pubkey", "--data-dir", str(tmp_path))
    assert proc.returncode == 0 and proc.stdout == signer.vkey + "\n"


def test_pubkey_before_the_first_start_says_so(tmp_path):
    proc = run_cli("audit", "pubkey", "--data-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "no such file" in proc.stderr and "made when the server first starts" in proc.stderr


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("build-01.example.org", "kuadeploy/build-01.example.org"),
        ("my host+name", "kuadeploy/my-host-name"),
        ("hôte\t", "kuadeploy/h-te"),
        ("", "kuadeploy/localhost"),
        ("+++", "kuadeploy/localhost"),
    ],
)
def test_default_key_name_from_odd_hostnames(host, name):
    assert default_key_name(host) == name
    assert is_valid_key_name(name)


def test_configured_key_must_exist_and_is_used(tmp_path):
    key = tmp_path / "elsewhere" / "signer.key"
    with pytest.raises(KeyFileError, match="no such file"):
        load_signer(config(tmp_path, checkpoint_key=str(key)))
    made = create_signer(key, "example.org/log")
    assert load_signer(config(tmp_path, checkpoint_key=str(key))).vkey == made.vkey
    key.write_text("PRIVATE+KEY+nonsense\n")
    with pytest.raises(KeyFileError, match="signer key"):
        load_signer(config(tmp_path, checkpoint_key=str(key)))


def test_a_lost_race_to_make_the_key_uses_the_winners(tmp_path):
    path = tmp_path / "keys" / "checkpoint.key"
    first = create_signer(path, "kuadeploy/a")
    second = create_signer(path, "kuadeploy/b")
    assert second.vkey == first.vkey


# --- signing ------------------------------------------------------------------------------


async def test_an_empty_ledger_gets_a_checkpoint_of_size_0(tmp_path):
    opened = await open_checked(config(tmp_path))
    latest = opened.checkpointer.latest
    assert latest is not None and latest.size == 0 and latest.root == EMPTY_ROOT
    signer = load_signer(config(tmp_path))
    mirrored = (tmp_path / "checkpoints" / "latest").read_text()
    assert mirrored == latest.note == checkpoints.checkpoint_text(opened.checkpointer)
    checkpoint = open_checkpoint(mirrored, [signer.verifier], origin=signer.name)
    assert checkpoint.size == 0
    await opened.ledger.close()


async def test_every_checkpoint_is_consistent_with_the_one_before(tmp_path):
    opened = await open_checked(config(tmp_path))
    led = opened.ledger

    async def writer(k: int) -> None:
        for i in range(40):
            await led.append([register(f"a{k}", f"b{i}")], actor=f"w{k}")
            await asyncio.sleep(0)

    await asyncio.gather(*(writer(k) for k in range(8)))
    await led.close()
    rows = table(tmp_path)
    assert len(rows) >= 5, "interval 0: one signature after another while appends go on"
    assert rows[-1][0] == 320, "close signs the head"
    conn = sqlite3.connect(tmp_path / "ledger.db")
    bodies = [b for (b,) in conn.execute("SELECT body FROM events ORDER BY seq")]
    conn.close()
    verifier = load_signer(config(tmp_path)).verifier
    led = await Ledger.open(str(tmp_path / "ledger.db"))
    for (old, old_root, _), (new, new_root, note) in pairwise(rows):
        assert open_checkpoint(note, [verifier]).root == new_root
        assert new_root == reference_root(bodies[:new])
        proof = await checkpoints.consistency(led, old, new)
        hashes = [bytes.fromhex(h) for h in proof["hashes"]]
        verify_consistency(old, new, hashes, old_root, new_root)
    await led.close()
    assert (tmp_path / "checkpoints" / "latest").read_text() == rows[-1][2]


async def test_under_load_at_most_one_checkpoint_per_interval(tmp_path):
    opened = await open_checked(config(tmp_path, checkpoint_interval_s=0.25))
    led, cp = opened.ledger, opened.checkpointer
    start = asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() - start < 1.2:
        await asyncio.gather(*(led.append([register(f"a{k}")], actor="t") for k in range(8)))
    signed_under_load = cp.signed
    assert 2 <= signed_under_load <= 1 + 1.2 / 0.25 + 1  # the start-up one, then <= 1 per 0.25 s
    head = led.head.seq
    assert cp.latest.size < head or cp.latest.size == head
    await asyncio.sleep(0.5)  # idle: the pending one is written within the interval
    assert cp.latest.size == head
    assert cp.signed <= signed_under_load + 1
    await led.close()


async def test_a_restart_continues_the_same_lineage(tmp_path):
    opened = await open_checked(config(tmp_path))
    await opened.ledger.append([register("web")], actor="t")
    await opened.ledger.close()
    first = table(tmp_path)
    opened = await open_checked(config(tmp_path))
    assert opened.checkpointer.signed == 0, "the head is covered: nothing to sign at start"
    await opened.ledger.append([register("api")], actor="t")
    await opened.ledger.close()
    rows = table(tmp_path)
    assert rows[: len(first)] == first and rows[-1][0] == 2


async def test_a_lagging_mirror_is_brought_up_to_date_at_start(tmp_path):
    opened = await open_checked(config(tmp_path))
    await opened.ledger.append([register("web")], actor="t")
    await opened.ledger.close()
    mirror = tmp_path / "checkpoints" / "latest"
    first_note = table(tmp_path)[0][2]
    mirror.write_text(first_note)  # as if we crashed between the table and the mirror
    opened = await open_checked(config(tmp_path))
    assert mirror.read_text() == table(tmp_path)[-1][2] == opened.checkpointer.latest.note
    await opened.ledger.close()


async def test_checkpoint_mirror_from_config(tmp_path):
    mirror = tmp_path / "other-volume" / "cp"
    opened = await open_checked(config(tmp_path / "data", checkpoint_mirror=str(mirror)))
    await opened.ledger.append([register("web")], actor="t")
    await opened.ledger.close()
    assert mirror.read_text().split("\n")[1] == "1"
    assert not (tmp_path / "data" / "checkpoints").exists()


async def test_the_origin_is_configurable(tmp_path):
    opened = await open_checked(config(tmp_path, checkpoint_origin="example.org/deploys"))
    assert opened.checkpointer.latest.note.startswith("example.org/deploys\n0\n")
    await opened.ledger.close()


async def five_events_and_a_forged_checkpoint(tmp_path) -> None:
    """Five events signed at size 5, then the table's row forged: its root no longer
    matches the tree at its size."""
    opened = await open_checked(config(tmp_path))
    for i in range(5):
        await opened.ledger.append([register("web", f"b{i}")], actor="t")
    await opened.ledger.close()
    conn = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    conn.execute("UPDATE checkpoints SET root = zeroblob(32) WHERE size = 5")
    conn.close()


async def test_signing_refuses_a_head_that_contradicts_the_last_checkpoint(tmp_path):
    await five_events_and_a_forged_checkpoint(tmp_path)
    led = await Ledger.open(str(tmp_path / "ledger.db"))
    signer = load_signer(config(tmp_path))
    cp = Checkpointer(led, signer, origin=signer.name, mirror=tmp_path / "m", interval_s=0)
    with pytest.raises(CheckpointRefused, match="same size, different roots"):
        await cp.start()
    assert cp.failure is not None and "not signing checkpoints any more" in cp.failure
    await led.append([register("web", "more")], actor="t")
    with pytest.raises(CheckpointRefused, match="same size, different roots"):
        await cp.sign_head()  # stays refused: nothing is signed after a contradiction
    await led.close()
    assert table(tmp_path)[-1][0] == 5


async def test_signing_refuses_a_tree_that_does_not_extend_the_last_checkpoint(tmp_path):
    await five_events_and_a_forged_checkpoint(tmp_path)
    led = await Ledger.open(str(tmp_path / "ledger.db"))
    await led.append([register("web", "more")], actor="t")
    signer = load_signer(config(tmp_path))
    cp = Checkpointer(led, signer, origin=signer.name, mirror=tmp_path / "m", interval_s=0)
    with pytest.raises(CheckpointRefused, match="size 6 is not consistent with the checkpoint"):
        await cp.start()
    await led.close()
    assert table(tmp_path)[-1][0] == 5


# --- the audit routes' bodies -------------------------------------------------------------


async def test_route_bodies(tmp_path):
    opened = await open_checked(config(tmp_path, checkpoint_interval_s=3600))
    led, cp = opened.ledger, opened.checkpointer
    bodies = [s.body for i in range(40) for s in await led.append([register(f"a{i}")], actor="t")]
    await cp.sign_head()
    assert cp.latest.size == 40
    bodies += [s.body for s in await led.append([register("late")], actor="t")]  # unsigned yet

    body = await checkpoints.inclusion_from_query(led, cp, {"seq": "7"})
    assert list(body) == ["seq", "leaf_index", "tree_size", "root", "hashes"]
    assert (body["seq"], body["leaf_index"], body["tree_size"]) == (7, 6, 40)  # size: latest
    root = bytes.fromhex(body["root"])
    assert root == cp.latest.root
    hashes = [bytes.fromhex(h) for h in body["hashes"]]
    verify_inclusion(6, 40, leaf_hash(bodies[6]), hashes, root)

    body = await checkpoints.inclusion_from_query(led, cp, {"seq": "41", "size": "41"})
    assert bytes.fromhex(body["root"]) == reference_root(bodies)

    body = await checkpoints.consistency_from_query(led, cp, {"from": "13"})
    assert list(body) == ["from", "to", "hashes"] and (body["from"], body["to"]) == (13, 40)
    hashes = [bytes.fromhex(h) for h in body["hashes"]]
    verify_consistency(13, 40, hashes, reference_root(bodies[:13]), cp.latest.root)

    assert checkpoints.checkpoint_text(cp) == cp.latest.note
    await led.close()


@pytest.mark.parametrize(
    ("route", "query", "message"),
    [
        ("inclusion", {}, "'seq' is required"),
        ("inclusion", {"seq": "0", "size": "3"}, "seq 0 is not in the tree of size 3"),
        ("inclusion", {"seq": "4", "size": "3"}, "seq 4 is not in the tree of size 3"),
        ("inclusion", {"seq": "1", "size": "6"}, "tree size 6 is beyond the ledger's 5 events"),
        ("inclusion", {"seq": "-1"}, "'seq' must be a non-negative integer"),
        ("inclusion", {"seq": "1e3"}, "'seq' must be a non-negative integer"),
        ("inclusion", {"seq": "٣"}, "'seq' must be a non-negative integer"),
        ("consistency", {"from": "4", "to": "3"}, "no consistency proof from size 4 to 3"),
        ("consistency", {"from": "1", "to": "99"}, "tree size 99 is beyond"),
        ("consistency", {"to": "3"}, "'from' is required"),
    ],
)
async def test_route_requests_outside_the_tree_are_refused(tmp_path, route, query, message):
    opened = await open_checked(config(tmp_path))
    for i in range(5):
        await opened.ledger.append([register(f"a{i}")], actor="t")
    fn = getattr(checkpoints, f"{route}_from_query")
    with pytest.raises(checkpoints.ProofRequestError, match=message):
        await fn(opened.ledger, opened.checkpointer, query)
    await opened.ledger.close()


async def test_proofs_for_sizes_not_yet_flushed_match_after_the_flush(tmp_path):
    led = await Ledger.open(str(tmp_path / "ledger.db"))
    signer = Signer.generate("kuadeploy/test")
    cp = Checkpointer(led, signer, origin=signer.name, mirror=tmp_path / "m", interval_s=0)
    await cp.start()
    for i in range(100):
        await led.append([register(f"a{i % 9}", f"b{i}")], actor="t")
    before = await checkpoints.inclusion(led, 33, 100)
    await led.close()
    led = await Ledger.open(str(tmp_path / "ledger.db"))
    assert await checkpoints.inclusion(led, 33, 100) == before
    await led.close()
