"""Offline CLI on a data dir: export at a seq or a time, rebuild's comparisons."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kuadeploy import events as ev
from kuadeploy.ledger import Ledger, NewEvent
from kuadeploy.projector import Projector, State
from tests.support import ROOT, register, run_cli

TIMES = [f"2026-03-0{d}T10:00:00.000000Z" for d in range(1, 8)]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    async def fill() -> None:
        clock = iter(TIMES)
        led = await Ledger.open(str(tmp_path / "ledger.db"), clock=lambda: next(clock))
        Projector(State(), snapshot_every=2).attach(led)
        await led.append([register("web", "main")], actor="kavi")  # 1 @ day 1
        await led.append([register("api", "main")], actor="kavi")  # 2 @ day 2
        await led.append([register("web", "dev")], actor="kavi")  # 3 @ day 3
        await led.append([NewEvent("app/api", ev.AppRemoved(app="api"))], actor="kavi")  # 4
        await led.append([register("db", "main")], actor="kavi")  # 5 @ day 5
        await led.close()

    asyncio.run(fill())
    return tmp_path


def export(data_dir: Path, *args: str) -> dict:
    proc = run_cli("export", "--data-dir", str(data_dir), *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_export_head_and_at_seq(data_dir):
    head = export(data_dir)
    assert head["as_of"]["seq"] == 5 and sorted(head["apps"]) == ["db", "web"]
    assert head["versions"] == {"db": 1, "web": 2}
    at3 = export(data_dir, "--at", "3")
    assert (
        at3["as_of"]
        == {
            "seq": 3,
            "ts": TIMES[2],
            "hash": at3["as_of"]["hash"],
        }
        and len(at3["as_of"]["hash"]) == 64
    )
    assert at3["apps"]["web"]["branch"] == "dev" and at3["apps"]["api"]["branch"] == "main"
    assert export(data_dir, "--at", "1")["apps"].keys() == {"web"}


def test_export_at_time_takes_the_last_event_at_or_before_it(data_dir):
    assert export(data_dir, "--at", "2026-03-03T10:00:00Z")["as_of"]["seq"] == 3
    assert export(data_dir, "--at", "2026-03-03T12:00:00+02:00")["as_of"]["seq"] == 3
    assert export(data_dir, "--at", "2026-03-03T11:59:59+02:00")["as_of"]["seq"] == 2
    assert export(data_dir, "--at", "2026-03-04T09:59:59Z")["as_of"]["seq"] == 3
    assert export(data_dir, "--at", "2026-03-04T10:00:00Z")["apps"].keys() == {"web"}


@pytest.mark.parametrize(
    ("at", "message"),
    [
        ("6", "beyond the head"),
        ("0", "seq of 1 or more"),
        ("2026-02-01T00:00:00Z", "before the first event"),
        ("2999-01-01T00:00:00Z", "in the future"),
        ("2026-03-03T10:00:00", "no UTC offset"),
        ("yesterday", "not an RFC 3339 time"),
    ],
)
def test_export_at_an_impossible_point_is_a_clear_error(data_dir, at, message):
    proc = run_cli("export", "--data-dir", str(data_dir), "--at", at)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


def test_rebuild_matches_snapshots(data_dir):
    proc = run_cli("rebuild", "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stdout
    assert "ok: rebuilt 5 events to seq 5; 2 snapshots compared" in proc.stdout


def test_rebuild_reports_a_snapshot_that_differs(data_dir):
    conn = sqlite3.connect(data_dir / "ledger.db", isolation_level=None)
    blob = conn.execute("SELECT state FROM snapshots WHERE seq = 4").fetchone()[0]
    conn.execute("UPDATE snapshots SET state = ? WHERE seq = 4", (blob.replace(b"dev", b"xyz"),))
    conn.close()
    proc = run_cli("rebuild", "--data-dir", str(data_dir))
    assert proc.returncode == 1
    assert "snapshot at seq 4 differs from the rebuilt state" in proc.stdout
    assert "live state (snapshot + tail) differs" in proc.stdout


def test_a_snapshot_from_another_chain_is_not_loaded(data_dir):
    conn = sqlite3.connect(data_dir / "ledger.db", isolation_level=None)
    conn.execute("UPDATE snapshots SET hash = zeroblob(32) WHERE seq = 4")
    conn.close()
    proc = run_cli("rebuild", "--data-dir", str(data_dir))
    assert proc.returncode == 1
    assert "snapshot at seq 4 was taken on another chain" in proc.stdout
    assert "live state" not in proc.stdout  # start-up skipped it and used seq 2's


def test_missing_ledger_is_a_clear_error(tmp_path):
    proc = run_cli("audit", "verify", "--data-dir", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "no ledger here" in proc.stderr


@pytest.mark.parametrize("args", [["audit", "verify"], ["export"], ["history", "web"], ["rebuild"]])
def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path, args):
    (tmp_path / "ledger.db").write_bytes(b"not sqlite at all " * 512)
    proc = run_cli(*args, "--data-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "not a database" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _read_only(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`kuadeploy ARGS` with `data_dir` on a read-only mount (a backup on read-only
    media, a `:ro` volume): root ignores file modes, so a bind mount it is."""
    # ./scripts/test runs as root (apt, dockerd) with util-linux: never a skip there
    assert shutil.which("unshare"), "needs unshare (util-linux) for a read-only mount"
    d = shlex.quote(str(data_dir))
    script = f'mount --bind {d} {d} && mount -o remount,bind,ro {d} && exec "$@"'
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", "true"], check=False)
    assert probe.returncode == 0, "no read-only bind mount here (the tests run as root)"
    full = [sys.executable, "-m", "kuadeploy", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", *full],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "out"),
    [
        (["export", "--at", "3"], '"seq": 3'),
        (["history", "web"], "AppRegistered"),
        (["rebuild"], "ok: rebuilt 5 events"),
    ],
)
def test_offline_commands_read_a_ledger_on_read_only_media(data_dir, args, out):
    # A WAL ledger closed cleanly has no -wal/-shm; SQLite cannot make the -shm there.
    assert not (data_dir / "ledger.db-wal").exists()
    proc = _read_only(data_dir, *args, "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    assert out in proc.stdout


def test_audit_verify_on_read_only_media_gives_the_verdict(data_dir):
    # The chain verifies; failing to record the verified point must not turn that
    # into exit 1 ("verification failed") with a traceback.
    proc = _read_only(data_dir, "audit", "verify", "--full", "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    assert "ok: 5 events verified from event 1" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_garbled_verified_point_means_verifying_from_event_1(data_dir):
    (data_dir / "audit").mkdir()
    (data_dir / "audit" / "verified.json").write_text('{"seq": 3, "hash": "zz"}')
    proc = run_cli("audit", "verify", "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    assert "ok: 5 events verified from event 1" in proc.stdout


def test_token_add_problems_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "tokens.json").write_text("{bad")
    for data_dir, says in [(tmp_path / "file", "file"), (garbled, "tokens.json")]:
        proc = run_cli("token", "add", "ci", "--role", "reader", "--data-dir", str(data_dir))
        assert proc.returncode == 2, proc.stderr
        assert says in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    assert (garbled / "tokens.json").read_text() == "{bad"  # left for a person to mend


def test_token_add_on_a_read_only_data_dir_is_one_line(data_dir):
    proc = _read_only(
        data_dir, "token", "add", "ci", "--role", "reader", "--data-dir", str(data_dir)
    )
    assert proc.returncode == 2, proc.stderr
    assert "Read-only file system" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""  # no token printed that was never stored
