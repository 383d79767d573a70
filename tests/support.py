"""Shared helpers for tests: a ledger in a temp dir, event factories, CLI runner."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from kuadeploy import events as ev
from kuadeploy.entry import AppEntry
from kuadeploy.ledger import Ledger, NewEvent

ROOT = Path(__file__).resolve().parent.parent


def entry(branch: str = "main", server: str = "local", **kw) -> AppEntry:
    return AppEntry(
        server=server, repo="https://forge.example.org/infra/web.git", branch=branch, **kw
    )


def register(app: str, branch: str = "main", expected: int | None = None) -> NewEvent:
    return NewEvent(f"app/{app}", ev.AppRegistered(app=app, entry=entry(branch)), expected)


def fill_mixed_ledger(path: Path, n: int) -> None:
    """`n` single-event appends: registrations of four apps, every third a deploy."""

    async def fill() -> None:
        led = await Ledger.open(str(path))
        for i in range(n):
            if i % 3 == 2:
                item = NewEvent(f"deploy/d{i}", ev.DeployRequested(app="web", trigger="api"))
            else:
                item = register(f"app{i % 4}", f"b{i}")
            await led.append([item], actor="kavi")
        await led.close()

    asyncio.run(fill())


def unprotect(conn: sqlite3.Connection) -> None:
    """Drop the triggers that keep `events` append-only: what a forger does first."""
    conn.execute("DROP TRIGGER IF EXISTS events_no_update")
    conn.execute("DROP TRIGGER IF EXISTS events_no_delete")


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


@contextlib.contextmanager
def redirecting_server() -> Iterator[tuple[str, str, list[bytes]]]:
    """(its URL, where it redirects, the requests it got): a server on 127.0.0.1 that
    answers a first request with 307 to another origin (localhost) and a second with
    200 `{}`, so a client that follows the redirect shows up as a second request."""
    seen: list[bytes] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(2)  # a client that follows comes back at once
        port = server.getsockname()[1]
        moved = f"http://localhost:{port}/elsewhere"

        def serve() -> None:
            for _ in range(2):
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    return
                with conn:
                    seen.append(conn.recv(65536))
                    if len(seen) == 1:
                        conn.sendall(
                            f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {moved}\r\n"
                            "Content-Length: 0\r\n\r\n".encode()
                        )
                    else:
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            yield f"http://127.0.0.1:{port}", moved, seen
        finally:
            thread.join()
