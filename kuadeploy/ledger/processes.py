"""Helper processes for long reads of a ledger file (chain checks over a million rows):
CPU-bound Python, so threads would share one core."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from concurrent.futures import ProcessPoolExecutor


def file_of(conn: sqlite3.Connection) -> str | None:
    """The path of the connection's main database; None in memory."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main" and file:
            return file
    return None


def process_pool(workers: int) -> ProcessPoolExecutor:
    # fork only where no other thread could hold a lock (SQLite's, the allocator's)
    # at the moment of the fork; a server works from threads: spawn there.
    method = "fork" if threading.active_count() == 1 else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
