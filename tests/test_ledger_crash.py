"""SIGKILL a process appending in a loop, again and again: nothing that returned is lost,
and the checkpoint mirrored last always agrees with the ledger."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from kuadeploy.audit.checkpoints import checkpoint_problem, scan_ledger
from kuadeploy.audit.keys import load_signer
from kuadeploy.audit.merkle import root_at
from kuadeploy.audit.note import open_checkpoint
from kuadeploy.config import Config
from kuadeploy.ledger import reading
from kuadeploy.ledger.tree import STORED_FROM_LEVEL, LedgerNodes
from kuadeploy.ledger.verify import verify_ledger
from kuadeploy.projector import encode_state, load_state, rebuild_state
from tests.support import ROOT

KILLS = 12


def test_sigkill_at_random_moments_loses_no_returned_append(tmp_path):
    path = str(tmp_path / "ledger.db")
    # KUA_CRASH_SEED replays a failing run; the seed in use is in every failure message
    seed = int(os.environ.get("KUA_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    returned: dict[int, str] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_appender", path, str(round_)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        time.sleep(rng.uniform(0.4, 1.2))  # start-up takes ~0.3 s; kill anywhere after
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, f"seed {seed}: {err.decode()}"
        lines = out.decode().split("\n")[:-1]  # a last line without "\n" was cut mid-write
        for line in lines:
            seq, hash_hex = line.split()
            returned[int(seq)] = hash_hex

        conn = reading.open_readonly(path)
        stored = {seq: h.hex() for seq, *_, h in reading.iter_rows(conn)}
        missing = {s for s in returned if stored.get(s) != returned[s]}
        assert not missing, f"seed {seed}, round {round_}: lost {sorted(missing)[:5]}"
        result = verify_ledger(conn)
        assert result.ok, f"seed {seed}: {result}"
        live, rebuilt = encode_state(load_state(conn)), encode_state(rebuild_state(conn))
        assert live == rebuilt, f"seed {seed}, round {round_}: live state != rebuild"
        snapshots = conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0]
        signed = check_checkpoints(tmp_path, conn)
        conn.close()
    assert len(returned) > 100, "the appender should have made progress between kills"
    assert snapshots > 0, "start-up should have had snapshots to load"
    assert signed > 0, "checkpoints should have been signed under load"


def check_checkpoints(data_dir: Path, conn: sqlite3.Connection) -> int:
    """The mirrored checkpoint verifies and the ledger contains it; so does every
    checkpoint in the table, each consistent with the one before; the stored Merkle
    nodes agree with the bodies. Returns the size of the mirrored checkpoint."""
    rows = conn.execute("SELECT size, root FROM checkpoints ORDER BY size").fetchall()
    mirror = data_dir / "checkpoints" / "latest"
    if not mirror.exists():  # killed before the first start-up finished
        assert not rows
        return 0
    signer = load_signer(Config(data_dir=str(data_dir)), create=False)
    mirrored = open_checkpoint(mirror.read_bytes(), [signer.verifier])
    sizes = [mirrored.size, *(size for size, _ in rows)]
    roots, tree, _ = scan_ledger(conn, sizes)
    assert (
        checkpoint_problem(tree.size, roots.get(mirrored.size), mirrored.size, mirrored.root)
        is None
    )
    assert mirrored.size <= rows[-1][0], "the table is written before the mirror"
    for size, root in rows:
        assert roots[size] == root
    nodes = LedgerNodes(conn, repair=False)  # only what is stored (and the bodies below)
    stored = (
        conn.execute(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM merkle_nodes WHERE level = ?",
            (STORED_FROM_LEVEL,),
        ).fetchone()[0]
        << STORED_FROM_LEVEL
    )
    for size, root in rows:
        if size <= stored:
            assert root_at(nodes, size) == root
    return mirrored.size
