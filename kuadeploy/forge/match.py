"""Which registered apps a pushed repository and branch belong to."""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

from kuadeploy.entry import AppEntry
from kuadeploy.forge.payload import Repository

_SCP = re.compile(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>.+)$")  # git@host:owner/repo.git
BRANCH_PREFIX = "refs/heads/"


@functools.lru_cache(maxsize=4096)  # the same few URLs, for every delivery and app
def repo_key(url: str) -> str:
    """One spelling per repository: host and path, lowercased, without scheme, user,
    port, trailing slash or `.git`. https://, ssh://, scp-style and local paths of the
    same repository give the same key."""
    url = url.strip()
    if "://" in url:
        parts = urlsplit(url)
        host, path = (parts.hostname or ""), parts.path
    elif (m := _SCP.fullmatch(url)) and not url.startswith("/"):
        host, path = m["host"], m["path"]
    else:
        host, path = "", url
    path = path.strip("/").removesuffix(".git").rstrip("/")
    return f"{host.lower()}/{path.lower()}"


def apps_of_repo(entries: dict[str, AppEntry], repo: Repository) -> dict[str, AppEntry]:
    """The entries that track `repo`: their `forge_repo` names it, or their `repo` is
    one of its URLs. Only URLs that end in its `full_name` count, as the forge makes
    them: the signature binds a repo's own secret to that name only, and the URLs
    beside it are whatever the signer wrote — another repository's, even."""
    name = repo.full_name.casefold()
    own = "/" + repo.full_name.lower()  # lowercased as repo_key does
    given = (repo.clone_url, repo.ssh_url, repo.html_url)
    urls = {key for u in given if u.strip() and (key := repo_key(u)).endswith(own)}
    return {
        app: entry
        for app, entry in entries.items()
        if (entry.forge_repo and entry.forge_repo.casefold() == name)
        or repo_key(entry.repo) in urls
    }


def branch_of(ref: str) -> str | None:
    """The branch a full ref names; None for tags and other refs."""
    return ref[len(BRANCH_PREFIX) :] if ref.startswith(BRANCH_PREFIX) else None
