"""One branch of one git repository, written with pygit2, for the git export sink.

Synchronous (libgit2 blocks): only the sink's own worker thread calls it. A local
path is written in place, without a worktree; a bare repository is created when
nothing is there yet. A URL gets a local bare repository under the data dir whose
branch is fetched before writing (the remote is where the mirror lives) and
pushed after.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pygit2
from pygit2.enums import CredentialType, FileMode, RepositoryOpenFlag

from kuadeploy.sinks.mirror import Marker, Step, parse_marker
from kuadeploy.validation import check_branch

REGISTRY_FILE = "registry.json"
_COMMITTER = "kuadeploy"
_EMAIL_DOMAIN = "kuadeploy.invalid"  # RFC 2606: identifies the actor, mails no one
_MARKER_SEARCH = 1000  # first-parent commits searched for our marker past foreign ones
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


class SinkError(Exception):
    """A problem of the sink's target; the message says what to fix."""


def is_url(repo: str) -> bool:
    return "://" in repo or bool(_SCP_LIKE.match(repo))


def redact(text: str, url: str) -> str:
    """`text` without the password or token a URL may carry (health is unauthenticated)."""
    parts = urlsplit(url)
    if not parts.password and not parts.username:
        return text
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return text.replace(url, urlunsplit(parts._replace(netloc=netloc)))


class _Callbacks(pygit2.RemoteCallbacks):
    """Credentials from the URL (https user:token) or the ssh agent; asked once."""

    def __init__(self) -> None:
        super().__init__()
        self._asked = False
        self.rejected: str | None = None

    def credentials(self, url, username_from_url, allowed_types):
        if self._asked:  # libgit2 asks again after each rejection: stop at one
            raise SinkError("authentication rejected")
        self._asked = True
        parts = urlsplit(url)
        user = username_from_url or parts.username or "git"
        if allowed_types & CredentialType.USERPASS_PLAINTEXT and parts.password:
            return pygit2.UserPass(user, parts.password)
        if allowed_types & CredentialType.SSH_KEY:
            return pygit2.KeypairFromAgent(user)
        raise SinkError("authentication required (put a token in the URL or use an ssh agent)")

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message:
            self.rejected = f"{refname}: {message}"


class GitTarget:
    def __init__(self, repo: str, branch: str, work_dir: Path):
        self.repo = repo
        self.branch = branch
        self.ref = f"refs/heads/{branch}"
        self.url = repo if is_url(repo) else None
        if self.url:
            digest = hashlib.sha256(repo.encode()).hexdigest()[:16]
            self.path = work_dir / f"git-{digest}.git"
        else:
            self.path = Path(repo)
        self._repo: pygit2.Repository | None = None
        self._fetched = False
        self._unpushed = False

    def reset(self) -> None:
        """Forget everything cached: after an error, start over from the target."""
        self._repo = None
        self._fetched = False

    def prepare(self) -> None:
        """Open (or create) the repository; for a remote, fetch its branch first."""
        problem = check_branch(self.branch)
        if problem or not pygit2.reference_is_valid_name(self.ref):
            reason = f" ({problem})" if problem else ""
            raise SinkError(f"branch {self.branch!r} is not a valid git branch name{reason}")
        if self._repo is None:
            self._repo = self._open()
        if self.url and not self._fetched:
            callbacks = _Callbacks()
            remote = self._repo.remotes.create_anonymous(self.url)
            # Forced: the remote's branch is the mirror; local commits it lacks are
            # rewritten from the ledger.
            remote.fetch([f"+{self.ref}:{self.ref}"], callbacks=callbacks)
            self._fetched = True

    def _open(self) -> pygit2.Repository:
        path = self.path
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            pygit2.init_repository(str(path), bare=True)
        elif not path.is_dir():
            raise SinkError(f"{path} is not a directory")
        try:
            repo = pygit2.Repository(str(path), RepositoryOpenFlag.NO_SEARCH)
        except pygit2.GitError as exc:
            raise SinkError(f"{path} is not a git repository") from exc
        head = repo.references.get("HEAD")
        if not repo.is_bare and head is not None and head.target == self.ref:
            # Moving a checked-out branch under a worktree would leave it stale.
            raise SinkError(
                f"branch {self.branch} is checked out in {path}: "
                "use a bare repository or another branch"
            )
        return repo

    def tip(self) -> tuple[pygit2.Oid | None, Marker | None]:
        """The branch tip and the newest mirror position on its first-parent line."""
        assert self._repo is not None
        ref = self._repo.references.get(self.ref)
        if ref is None:
            return None, None
        oid = ref.resolve().target
        commit = self._repo[oid]
        for _ in range(_MARKER_SEARCH):
            marker = parse_marker(commit.message)
            if marker is not None:
                return oid, marker
            if not commit.parents:
                break
            commit = commit.parents[0]
        return oid, None

    def commit(self, step: Step, parent: pygit2.Oid | None) -> pygit2.Oid:
        """Commit `step` on the branch. Fails if the tip moved from `parent` meanwhile."""
        repo = self._repo
        assert repo is not None
        blob = repo.create_blob(step.document)
        # Built on the parent's tree: files people keep next to registry.json stay.
        builder = repo.TreeBuilder(repo[parent].tree) if parent else repo.TreeBuilder()
        builder.insert(REGISTRY_FILE, blob, FileMode.BLOB)
        tree = builder.write()
        author = pygit2.Signature(_name(step.actor), _email(step.actor), step.when, 0)
        committer = pygit2.Signature(_COMMITTER, f"{_COMMITTER}@{_EMAIL_DOMAIN}", step.when, 0)
        parents = [parent] if parent else []
        oid = repo.create_commit(self.ref, author, committer, step.message, tree, parents)
        self._unpushed = True
        return oid

    def push(self) -> None:
        if not self.url or not self._unpushed:
            return
        assert self._repo is not None
        callbacks = _Callbacks()
        remote = self._repo.remotes.create_anonymous(self.url)
        remote.push([f"{self.ref}:{self.ref}"], callbacks=callbacks)
        if callbacks.rejected:
            raise SinkError(f"push rejected: {callbacks.rejected}")
        self._unpushed = False


def _name(actor: str) -> str:
    return re.sub(r"[<>\n]", "", actor).strip() or "unknown"


def _email(actor: str) -> str:
    local = re.sub(r"[^A-Za-z0-9._-]+", "-", actor).strip("-.") or "unknown"
    return f"{local}@{_EMAIL_DOMAIN}"


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__
