"""Checkpoints and proofs over the real API; the start-up check in the real service."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from kuadeploy.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from kuadeploy.audit.note import Verifier, open_checkpoint
from kuadeploy.service import StartupError
from tests.api_support import entry_doc, make_config, running
from tests.test_deploy_pipeline import run_cli_async


async def fill(api, n: int) -> None:
    """n registry changes, each a new event."""
    for _ in range(n):
        k = await api.head_seq()
        status, _, _ = await api.call("PUT", f"/api/v1/apps/a{k % 4}", json=entry_doc(f"b{k}"))
        assert status in (200, 201)


async def checkpoint(api, verifier: Verifier):
    while True:  # signed at most once per interval: wait until it covers the head
        status, note, resp = await api.call("GET", "/api/v1/audit/checkpoint", role="reader")
        assert status == 200 and resp.content_type == "text/plain"
        cp = open_checkpoint(note.decode(), [verifier])
        if cp.size == await api.head_seq():
            return cp
        await asyncio.sleep(0.05)


@pytest.fixture
async def api(tmp_path):
    async with running(make_config(tmp_path, checkpoint_interval_s=0.05)) as client:
        yield client


def verifier_of(api) -> Verifier:
    return api.service.checkpointer.signer.verifier


async def test_checkpoint_is_a_signed_note_of_the_head(api):
    await fill(api, 10)
    cp = await checkpoint(api, verifier_of(api))
    assert cp.size == 10 and cp.origin.startswith("kuadeploy/")
    rc, out, _ = await run_cli_async("audit", "pubkey", "--data-dir", api.service.config.data_dir)
    assert rc == 0 and Verifier.from_vkey(out.strip()).key_id == verifier_of(api).key_id


async def test_inclusion_and_consistency_proofs_verify(api):
    await fill(api, 7)
    old = await checkpoint(api, verifier_of(api))
    await fill(api, 13)
    new = await checkpoint(api, verifier_of(api))
    _, page, _ = await api.call("GET", "/api/v1/events?limit=1000", role="reader")
    bodies = {e["seq"]: e["body"].encode() for e in page["events"]}
    for seq in (1, 7, 8, 20):
        status, proof, _ = await api.call(
            "GET", f"/api/v1/audit/proof/inclusion?seq={seq}&size={new.size}", role="reader"
        )
        assert status == 200 and proof["leaf_index"] == seq - 1 and proof["tree_size"] == 20
        assert bytes.fromhex(proof["root"]) == new.root
        hashes = [bytes.fromhex(h) for h in proof["hashes"]]
        verify_inclusion(seq - 1, new.size, leaf_hash(bodies[seq]), hashes, new.root)
    status, proof, _ = await api.call(
        "GET", f"/api/v1/audit/proof/consistency?from={old.size}&to={new.size}", role="reader"
    )
    assert status == 200 and (proof["from"], proof["to"]) == (7, 20)
    verify_consistency(7, 20, [bytes.fromhex(h) for h in proof["hashes"]], old.root, new.root)


@pytest.mark.parametrize(
    "query",
    [
        "proof/inclusion?seq=0&size=3",
        "proof/inclusion?seq=5&size=3",
        "proof/inclusion?seq=1&size=999",
        "proof/inclusion?size=3",
        "proof/consistency?from=4&to=2",
        "proof/consistency?from=x",
    ],
)
async def test_bad_proof_requests_are_400(api, query):
    await fill(api, 3)
    status, body, resp = await api.call("GET", f"/api/v1/audit/{query}", role="reader")
    assert status == 400 and resp.content_type == "application/problem+json", body


async def test_witness_cli_against_the_running_server(api, tmp_path):
    await fill(api, 5)
    await checkpoint(api, verifier_of(api))
    state = tmp_path / "witness.state"
    rc, vkey, _ = await run_cli_async("audit", "pubkey", "--data-dir", api.service.config.data_dir)
    args = ("audit", "witness", "--url", api.base, "--token", "t-reader", "--state", str(state),
            "--pubkey", vkey.strip())  # fmt: skip
    rc, out, err = await run_cli_async(*args)
    assert rc == 0 and "trust on first use" in out, out + err
    await fill(api, 6)
    await checkpoint(api, verifier_of(api))
    rc, out, err = await run_cli_async(*args)
    assert rc == 0 and "size 11 extends size 5" in out, out + err


async def test_startup_refuses_a_truncated_ledger_unless_told(tmp_path):
    config = make_config(tmp_path, checkpoint_interval_s=0.05)
    async with running(config) as api:
        await fill(api, 12)
    conn = sqlite3.connect(config.ledger_path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DELETE FROM events WHERE seq > 9")
    conn.execute("DELETE FROM snapshots")
    conn.close()
    with pytest.raises(StartupError, match="truncated"):
        async with running(config):
            pass
    from kuadeploy.service import Service

    service = await Service.open(config, accept_ledger_rewind=True)
    try:
        last = (await service.ledger.read(after=9, limit=10))[0].event
        assert last.type == "CheckpointOverridden" and last.data.old_size == 12
        assert last.data.new_size == 9
    finally:
        await service.close()
    async with running(config) as api:  # accepted once: starts normally afterwards
        assert await api.head_seq() == 10
