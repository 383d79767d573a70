"""Progress lines of long offline work: `audit verify` and `rebuild` say how far they
are, on stderr, when asked or when stderr is a terminal; the verdict is the same."""

from __future__ import annotations

import io
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from kuadeploy.ledger import reading, verify
from kuadeploy.progress import Progress
from kuadeploy.rebuild import rebuild_and_compare
from tests.support import fill_mixed_ledger, run_cli, unprotect

N = 60


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    fill_mixed_ledger(data / "ledger.db", N)
    return data


def shown(what: str) -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    return Progress(what, out=out, every_s=0), out


@pytest.mark.parametrize("workers", [1, 3])
def test_verify_shows_progress_and_gives_the_same_verdict(pristine, tmp_path, monkeypatch, workers):
    monkeypatch.setattr(verify, "PARALLEL_ROWS", 1)  # chunks in other processes at 60 rows
    path = tmp_path / "ledger.db"
    shutil.copy(pristine / "ledger.db", path)
    with closing(reading.open_readonly(str(path))) as conn:
        progress, out = shown("verified")
        assert verify.verify_ledger(conn, workers=workers, progress=progress).ok
    lines = out.getvalue().splitlines()
    assert lines[-1] == f"verified: {N} of {N} events (100%)"
    counts = [int(line.split()[1]) for line in lines]
    assert counts == sorted(counts) and (workers == 1 or len(lines) > 2), lines
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        unprotect(conn)
        conn.execute("UPDATE events SET body = CAST(body || ' ' AS BLOB) WHERE seq = 37")
    with closing(reading.open_readonly(str(path))) as conn:
        quiet = verify.verify_ledger(conn, workers=1)
        loud = verify.verify_ledger(conn, workers=workers, progress=shown("verified")[0])
    assert loud == quiet and quiet.first_bad_seq == 37


def test_rebuild_shows_progress(pristine):
    progress, out = shown("rebuilt")
    with closing(reading.open_readonly(str(pristine / "ledger.db"))) as conn:
        state, report = rebuild_and_compare(conn, progress)
    assert report.ok and state.seq == N
    assert out.getvalue().splitlines()[-1] == f"rebuilt: {N} of {N} events (100%)"


@pytest.mark.parametrize("command", [["audit", "verify", "--full"], ["rebuild"]])
def test_cli_progress_on_request_only(pristine, command):
    line = f"{N} of {N} events (100%)"
    asked = run_cli(*command, "--data-dir", str(pristine), "--progress")
    assert asked.returncode == 0, asked.stderr
    assert asked.stderr.splitlines()[-1].endswith(line), asked.stderr
    assert line not in asked.stdout  # the verdict stays alone on stdout
    quiet = run_cli(*command, "--data-dir", str(pristine))  # stderr is no terminal here
    assert quiet.returncode == 0 and line not in quiet.stderr, quiet.stderr
