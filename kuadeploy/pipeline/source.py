"""A deploy's source: mirror the repository, resolve the commit, export its tree.

These run in worker threads, which a step's timeout or a cancel cannot stop. So a
run that ended while its thread still works (a forge that accepts and never
answers) must leave nothing behind: libgit2 gets connect and read timeouts (it
waits forever without), one app's mirror is used by one thread at a time (waited
for no longer than a fetch may take), and an export for a run that has ended is
removed by the thread that made it.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from kuadeploy.adapters import git
from kuadeploy.config import GitCredentials

_locks: dict[Path, threading.Lock] = {}
_locks_lock = threading.Lock()


def mirror_lock(mirror_dir: Path) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(mirror_dir.resolve(), threading.Lock())


def credentials(url: str, table: dict[str, GitCredentials]) -> git.Credentials | None:
    best = max((prefix for prefix in table if url.startswith(prefix)), key=len, default=None)
    if best is None:
        return None
    c = table[best]
    return git.Credentials(
        ssh_key=c.ssh_key,
        ssh_pubkey=c.ssh_pubkey,
        ssh_passphrase=c.ssh_passphrase,
        token=c.token,
        username=c.username,
    )


def fetch_and_export(
    url: str,
    mirror_dir: Path,
    branch: str,
    sha: str | None,
    force: bool,
    creds: git.Credentials | None,
    work: Path,
    latest: bool,
    timeout_s: float,
    ended: threading.Event,
) -> str:
    """Mirror, resolve and export the commit to deploy; with `latest`, a `sha` on the
    branch stands for the branch head (it is that commit or a newer one). `ended` is
    set once the run no longer waits for this."""
    git.set_timeouts(timeout_s)
    mirror_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = mirror_lock(mirror_dir)
    # bounded, or threads of runs that timed out waiting here would pile up
    if not lock.acquire(timeout=timeout_s):
        raise git.GitError("an earlier fetch of this repository is still running")
    try:
        if ended.is_set():
            raise git.GitError("the deploy ended before its fetch began")
        mirror = git.Mirror.sync(url, mirror_dir, creds)
        if sha is None:
            sha = mirror.branch_head(branch)
        else:
            sha = mirror.commit_of(sha)
            if not force and not mirror.on_branch(sha, branch):
                raise ValueError(f"{sha} is not on branch {branch} (use force to deploy it anyway)")
            if latest and not force:
                sha = mirror.branch_head(branch)
        shutil.rmtree(work, ignore_errors=True)
        mirror.export(sha, work / "src")
    finally:
        lock.release()
    if ended.is_set():  # the run's own clean-up may have come before the export
        shutil.rmtree(work, ignore_errors=True)
    return sha


def changed_paths(mirror_dir: Path, old: str | None, new: str) -> list[str]:
    with mirror_lock(mirror_dir):
        mirror = git.Mirror.open(mirror_dir)
        try:
            return mirror.changed_paths(old, new)
        except git.RefNotFound:  # the old release is gone from the repo: treat all as changed
            return mirror.changed_paths(None, new)
