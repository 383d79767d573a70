"""Git through pygit2: a local bare mirror per app, and what a deploy needs from it.

Synchronous on purpose: libgit2 calls block, so call sites wrap them in
`asyncio.to_thread`. Branches are fetched into `refs/remotes/origin/*` with
force and prune, so a force-push or a deleted branch on the forge shows here
exactly as it is there.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pygit2
from pygit2.enums import CredentialType, FetchPrune, FileMode, ObjectType

_REFSPEC = "+refs/heads/*:refs/remotes/origin/*"
_HEX = re.compile(r"^[0-9a-f]{7,64}$")


class GitError(Exception):
    """Base of every error this adapter raises; the message says what and where."""


class RefNotFound(GitError):
    pass


class UnsafeTree(GitError):
    """A tree that would write outside its export directory."""


class Credentials(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How to authenticate to a private repository: an ssh key, or an https token."""

    ssh_key: str | None = None  # private key path; the public key is derived unless given
    ssh_pubkey: str | None = None
    ssh_passphrase: str | None = None
    token: str | None = None  # sent as the https password (Forgejo, Gitea, GitLab, GitHub)
    username: str | None = None  # default: the URL's user, else "git"


class _Callbacks(pygit2.RemoteCallbacks):
    def __init__(self, credentials: Credentials | None) -> None:
        super().__init__()
        self._credentials = credentials
        self._offered = False

    def credentials(
        self, url: str, username_from_url: str | None, allowed_types: CredentialType
    ) -> pygit2.Username | pygit2.UserPass | pygit2.Keypair:
        # libgit2 asks again after every rejection; asking once keeps a wrong
        # key or token from looping forever.
        creds = self._credentials
        if creds is None or self._offered:
            raise GitError(f"{url}: authentication required or rejected")
        self._offered = True
        user = creds.username or username_from_url or "git"
        if allowed_types & CredentialType.SSH_KEY and creds.ssh_key:
            return pygit2.Keypair(user, creds.ssh_pubkey, creds.ssh_key, creds.ssh_passphrase or "")
        if allowed_types & CredentialType.USERPASS_PLAINTEXT and creds.token:
            return pygit2.UserPass(user, creds.token)
        if allowed_types & CredentialType.USERNAME:
            return pygit2.Username(user)
        raise GitError(f"{url}: no configured credential fits (allowed: {allowed_types!r})")


def set_timeouts(seconds: float) -> None:
    """Bound each connect and each read of a fetch: libgit2 waits forever on a server
    that accepts and never answers. Process-wide (libgit2 has no per-remote knob)."""
    ms = max(1, round(seconds * 1000))
    if pygit2.settings.server_timeout != ms or pygit2.settings.server_connect_timeout != ms:
        pygit2.settings.server_connect_timeout = ms
        pygit2.settings.server_timeout = ms


class Mirror:
    """A bare local copy of one remote repository."""

    def __init__(self, repo: pygit2.Repository) -> None:
        self.repo = repo

    @classmethod
    def open(cls, path: Path) -> Mirror:
        """An existing mirror, without fetching."""
        try:
            return cls(pygit2.Repository(str(path)))
        except pygit2.GitError as e:
            raise GitError(_explained(e)) from e

    @classmethod
    def sync(cls, url: str, path: Path, credentials: Credentials | None = None) -> Mirror:
        """Create the mirror at `path` when missing, point it at `url`, fetch."""
        try:
            if (path / "HEAD").exists():
                repo = pygit2.Repository(str(path))
            else:
                repo = pygit2.init_repository(str(path), bare=True)
        except pygit2.GitError as e:
            raise GitError(_explained(e)) from e
        try:
            if "origin" in repo.remotes.names():
                if repo.remotes["origin"].url != url:
                    repo.remotes.set_url("origin", url)
            else:
                repo.remotes.create("origin", url, _REFSPEC)
        except (pygit2.GitError, ValueError) as e:  # an empty URL: InvalidSpecError
            raise GitError(f"{url!r}: {_explained(e)}") from e
        mirror = cls(repo)
        mirror.fetch(credentials)
        return mirror

    def fetch(self, credentials: Credentials | None = None) -> None:
        remote = self.repo.remotes["origin"]
        try:
            try:
                remote.fetch([_REFSPEC], callbacks=_Callbacks(credentials), prune=FetchPrune.PRUNE)
            except pygit2.GitError:
                # A branch deleted on the forge whose name became a directory of a new
                # one (`release` -> `release/v2`) makes the fetch fail before it prunes,
                # on every later fetch too: prune first, then fetch again.
                if not self._prune_stale(remote, credentials):
                    raise
                remote.fetch([_REFSPEC], callbacks=_Callbacks(credentials), prune=FetchPrune.PRUNE)
        except (pygit2.GitError, OSError, ValueError) as e:
            raise GitError(f"fetch {remote.url}: {_explained(e, remote.url)}") from e

    def _prune_stale(self, remote: pygit2.Remote, credentials: Credentials | None) -> bool:
        """Delete the remote-tracking branches the remote no longer has; whether any."""
        heads = {head.name for head in remote.list_heads(callbacks=_Callbacks(credentials))}
        prefix = "refs/remotes/origin/"
        stale = [
            name
            for name in self.repo.references
            if name.startswith(prefix) and f"refs/heads/{name.removeprefix(prefix)}" not in heads
        ]
        for name in stale:
            self.repo.references.delete(name)
        return bool(stale)

    def branch_head(self, branch: str) -> str:
        ref = self.repo.references.get(f"refs/remotes/origin/{branch}")
        if ref is None:
            raise RefNotFound(f"branch {branch!r} not found in {self.repo.remotes['origin'].url}")
        return str(ref.peel(pygit2.Commit).id)

    def commit_of(self, sha: str) -> str:
        """The full id of the commit `sha` (full or abbreviated hex) names."""
        if not _HEX.fullmatch(sha):
            raise RefNotFound(f"{sha!r} is not a commit id")
        try:
            obj = self.repo.get(sha) if len(sha) in (40, 64) else self.repo.revparse_single(sha)
        except (KeyError, ValueError, pygit2.GitError) as e:
            raise RefNotFound(f"commit {sha} not found (or ambiguous): {e}") from e
        if obj is None or obj.type != ObjectType.COMMIT:
            raise RefNotFound(f"commit {sha} not found")
        return str(obj.id)

    def on_branch(self, sha: str, branch: str) -> bool:
        """Whether commit `sha` is the branch head or one of its ancestors."""
        head = self.branch_head(branch)
        full = self.commit_of(sha)
        return full == head or self.repo.descendant_of(head, full)

    def read_file(self, sha: str, path: str) -> bytes | None:
        """The file at `path` in commit `sha`; None when there is no such file."""
        tree = self.repo[self.commit_of(sha)].peel(pygit2.Commit).tree
        try:
            obj = self.repo[tree[path].id]
        except KeyError:
            return None
        return obj.data if obj.type == ObjectType.BLOB else None

    def changed_paths(self, old: str | None, new: str) -> list[str]:
        """Paths that differ between commits `old` and `new` (both sides of a
        rename); with no `old`, every file of `new`."""
        new_commit = self.repo[self.commit_of(new)].peel(pygit2.Commit)
        if old is None:
            return sorted(path for path, _ in _walk(self.repo, new_commit.tree, ""))
        old_commit = self.repo[self.commit_of(old)].peel(pygit2.Commit)
        diff = self.repo.diff(old_commit.tree, new_commit.tree)
        paths = {p for d in diff.deltas for p in (d.old_file.path, d.new_file.path)}
        return sorted(paths)

    def export(self, sha: str, dest: Path) -> None:
        """Write the tree of commit `sha` into `dest` (created, must not exist).

        Files keep their executable bit, symlinks stay symlinks and must resolve
        inside `dest`, submodules become empty directories (as in a checkout
        without them). Nothing is ever written outside `dest`; on UnsafeTree,
        `dest` is removed again.
        """
        commit = self.repo[self.commit_of(sha)].peel(pygit2.Commit)
        dest.mkdir(parents=True)
        root = dest.resolve()
        links: list[str] = []
        try:
            for rel, entry in _walk(self.repo, commit.tree, "", dirs=True):
                self._write(root / rel, entry)
                if entry.filemode == FileMode.LINK:
                    links.append(rel)
            # Checked once all links exist: a chain of links that each look
            # harmless can still climb out (a/up -> .., esc -> a/up/..).
            for rel in links:
                if not Path(os.path.realpath(root / rel)).is_relative_to(root):
                    link = os.readlink(root / rel)
                    raise UnsafeTree(f"{sha}: symlink {rel} -> {link} resolves outside the tree")
        except FileExistsError as e:  # two entries of one name: a crafted tree
            shutil.rmtree(dest)
            raise UnsafeTree(f"{sha}: duplicate path {e.filename}") from e
        except UnsafeTree:
            shutil.rmtree(dest)
            raise

    def _write(self, target: Path, entry: pygit2.Object) -> None:
        if entry.filemode in (FileMode.TREE, FileMode.COMMIT):
            target.mkdir()
        elif entry.filemode == FileMode.LINK:
            os.symlink(os.fsdecode(self.repo[entry.id].data), target)
        else:
            mode = 0o755 if entry.filemode == FileMode.BLOB_EXECUTABLE else 0o644
            # O_EXCL and O_NOFOLLOW: never through a link, never over a file.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            with os.fdopen(fd, "wb") as out:
                out.write(self.repo[entry.id].data)
            os.chmod(target, mode)  # the umask must not change what git recorded


def _explained(error: Exception, url: str | None = None) -> str:
    message = str(error)
    if "object format" in message:
        message += " (SHA-256 repositories need a libgit2 built with SHA-256 support)"
    local = url is not None and "://" not in url and ":" not in url.split("/", 1)[0]
    if local and "unsupported URL protocol" in message and not os.path.exists(url):
        message = "no repository at this path (it was moved or removed)"  # libgit2's words mislead
    return message


def _walk(
    repo: pygit2.Repository, tree: pygit2.Tree, prefix: str, dirs: bool = False
) -> Iterator[tuple[str, pygit2.Object]]:
    """(path, entry) for every entry below `tree`, parents before children."""
    for entry in tree:
        name = os.fsdecode(entry.raw_name)
        if name in ("", ".", "..", ".git") or "/" in name or "\0" in name:
            raise UnsafeTree(f"tree entry {prefix}{name!r} is not a safe file name")
        path = f"{prefix}{name}"
        if entry.filemode == FileMode.TREE:
            if dirs:
                yield path, entry
            yield from _walk(repo, repo[entry.id], f"{path}/", dirs)
        elif entry.filemode != FileMode.COMMIT or dirs:
            yield path, entry
