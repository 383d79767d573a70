"""SIGKILL a process appending in a loop, again and again: nothing that returned is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from kuadeploy.ledger import reading
from kuadeploy.ledger.verify import verify_ledger
from kuadeploy.projector import encode_state, load_state, rebuild_state
from tests.support import ROOT

KILLS = 12


def test_sigkill_at_random_moments_loses_no_returned_append(tmp_path):
    path = str(tmp_path / "ledger.db")
    rng = random.Random(os.getpid())
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
        assert proc.returncode == -signal.SIGKILL, err.decode()
        lines = out.decode().split("\n")[:-1]  # a last line without "\n" was cut mid-write
        for line in lines:
            seq, hash_hex = line.split()
            returned[int(seq)] = hash_hex

        conn = reading.open_readonly(path)
        stored = {seq: h.hex() for seq, _s, _v, _b, h in reading.iter_rows(conn)}
        missing = {s for s in returned if stored.get(s) != returned[s]}
        assert not missing, f"round {round_}: returned appends lost: {sorted(missing)[:5]}"
        result = verify_ledger(conn)
        assert result.ok, result
        assert encode_state(load_state(conn)) == encode_state(rebuild_state(conn))
        snapshots = conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0]
        conn.close()
    assert len(returned) > 100, "the appender should have made progress between kills"
    assert snapshots > 0, "start-up should have had snapshots to load"
