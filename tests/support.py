"""Shared helpers for tests: a ledger in a temp dir, event factories, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kuadeploy import events as ev
from kuadeploy.entry import AppEntry
from kuadeploy.ledger import NewEvent

ROOT = Path(__file__).resolve().parent.parent


def entry(branch: str = "main", server: str = "local", **kw) -> AppEntry:
    return AppEntry(
        server=server, repo="https://forge.example.org/infra/web.git", branch=branch, **kw
    )


def register(app: str, branch: str = "main", expected: int | None = None) -> NewEvent:
    return NewEvent(f"app/{app}", ev.AppRegistered(app=app, entry=entry(branch)), expected)


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run `python -m kuadeploy ARGS` from this checkout."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("KUA_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "kuadeploy", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )
