"""The git adapter against real bare repositories pushed to with the git CLI."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kuadeploy.adapters.git import Credentials, GitError, Mirror, RefNotFound, UnsafeTree
from tests.fixtures.testapp import GIT_ENV, SampleApp, git


class Upstream:
    """A bare repository (`url`) and a working clone that pushes to it."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.bare = root / "upstream.git"
        self.url = str(self.bare)
        self.work = root / "work"
        git(root, "init", "-q", "--bare", "--initial-branch=main", str(self.bare))
        git(root, "init", "-q", "--initial-branch=main", str(self.work))
        git(self.work, "remote", "add", "origin", self.url)

    def commit(self, files: dict[str, str | None], branch: str = "main") -> str:
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", f"change {sorted(files)}")
        return self.push(branch)

    def push(self, branch: str = "main", *flags: str) -> str:
        git(self.work, "push", "-q", *flags, "origin", f"HEAD:refs/heads/{branch}")
        return git(self.work, "rev-parse", "HEAD")

    def commit_tree(self, entries: str, message: str = "crafted") -> str:
        """Push a commit whose root tree is `git mktree` of `entries` (ls-tree format)."""
        tree = subprocess.run(
            ["git", "mktree", "--missing"],
            cwd=self.work,
            input=entries,
            capture_output=True,
            text=True,
            check=True,
            env=GIT_ENV,
        ).stdout.strip()
        sha = git(self.work, "commit-tree", tree, "-m", message)
        git(self.work, "push", "-q", "--force", "origin", f"{sha}:refs/heads/main")
        return sha

    def blob(self, content: str) -> str:
        return subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            cwd=self.work,
            input=content,
            capture_output=True,
            text=True,
            check=True,
            env=GIT_ENV,
        ).stdout.strip()


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    return Upstream(tmp_path)


def test_sync_clones_then_fetches_new_commits_force_pushes_and_deletions(
    upstream: Upstream, tmp_path: Path
) -> None:
    first = upstream.commit({"a.txt": "1"})
    mirror = Mirror.sync(upstream.url, tmp_path / "mirror")
    assert mirror.repo.is_bare
    assert mirror.branch_head("main") == first

    second = upstream.commit({"a.txt": "2"})
    upstream.commit({"f.txt": "feature"}, branch="feature")
    mirror = Mirror.sync(upstream.url, tmp_path / "mirror")  # reopens, fetches
    assert mirror.branch_head("main") == second
    assert mirror.branch_head("feature") != second

    git(upstream.work, "reset", "-q", "--hard", first)
    upstream.push("main", "--force")
    git(upstream.work, "push", "-q", "origin", ":refs/heads/feature")
    mirror.fetch()
    assert mirror.branch_head("main") == first
    with pytest.raises(RefNotFound, match="feature"):
        mirror.branch_head("feature")


def test_sync_follows_a_changed_repo_url(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"a.txt": "1"})
    Mirror.sync(upstream.url, tmp_path / "mirror")
    other = Upstream(tmp_path / "other")
    other_head = other.commit({"b.txt": "other"})
    mirror = Mirror.sync(other.url, tmp_path / "mirror")
    assert mirror.branch_head("main") == other_head


def test_sync_of_a_missing_repo_is_a_git_error_that_says_so(tmp_path: Path) -> None:
    with pytest.raises(GitError, match=r"fetch .*: no repository at this path"):
        Mirror.sync(str(tmp_path / "nowhere.git"), tmp_path / "mirror")


def test_on_branch_accepts_head_and_ancestors_only(upstream: Upstream, tmp_path: Path) -> None:
    old = upstream.commit({"a.txt": "1"})
    head = upstream.commit({"a.txt": "2"})
    git(upstream.work, "checkout", "-q", "-b", "side", old)
    side = upstream.commit({"side.txt": "x"}, branch="side")
    mirror = Mirror.sync(upstream.url, tmp_path / "mirror")

    assert mirror.on_branch(head, "main")
    assert mirror.on_branch(old, "main")
    assert mirror.on_branch(old[:10], "main")
    assert not mirror.on_branch(side, "main")
    assert mirror.commit_of(head[:12]) == head
    with pytest.raises(RefNotFound):
        mirror.on_branch("f" * 40, "main")
    with pytest.raises(RefNotFound):
        mirror.commit_of("HEAD~1")  # only commit ids, no rev expressions


def test_changed_paths_between_commits_and_from_nothing(upstream: Upstream, tmp_path: Path) -> None:
    old = upstream.commit({"app.py": "1", "migrations/0001.sql": "a", "docs/x.md": "d"})
    new = upstream.commit({"app.py": "2", "docs/x.md": None, "migrations/0002.sql": "b"})
    git(upstream.work, "mv", "app.py", "main.py")
    renamed = upstream.commit({})
    mirror = Mirror.sync(upstream.url, tmp_path / "mirror")

    assert mirror.changed_paths(old, new) == ["app.py", "docs/x.md", "migrations/0002.sql"]
    assert mirror.changed_paths(new, renamed) == ["app.py", "main.py"]
    assert mirror.changed_paths(new, new) == []
    assert mirror.changed_paths(None, old) == ["app.py", "docs/x.md", "migrations/0001.sql"]


def test_export_writes_files_modes_and_inside_symlinks(
    sample_app: SampleApp, tmp_path: Path
) -> None:
    mirror = Mirror.sync(sample_app.repo, tmp_path / "mirror")
    dest = tmp_path / "export"
    mirror.export(sample_app.head, dest)

    assert (dest / "Dockerfile").read_text().startswith("FROM scratch")
    assert (dest / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert (dest / "bin" / "sh").is_symlink()
    assert os.readlink(dest / "bin" / "sh") == "busybox"
    assert os.access(dest / "www" / "cgi-bin" / "healthz", os.X_OK)
    assert (dest / "config").stat().st_mode & 0o777 == 0o644
    assert not (dest / ".git").exists()
    with pytest.raises(FileExistsError):
        mirror.export(sample_app.head, dest)  # never over an existing directory


@pytest.mark.parametrize(
    "link",
    ["../../etc/passwd", "/etc/passwd", "sub/../.."],
)
def test_export_refuses_symlinks_out_of_the_tree(
    upstream: Upstream, tmp_path: Path, link: str
) -> None:
    upstream.commit({"sub/keep.txt": "k"})
    os.symlink(link, upstream.work / "escape")
    sha = upstream.commit({})
    mirror = Mirror.sync(upstream.url, tmp_path / "mirror")
    dest = tmp_path / "export"
    with pytest.raises(UnsafeTree, match="escape"):
        mirror.export(sha, dest)
    assert not dest.exists()


def test_export_refuses_a_chain_of_links_that_climbs_out(
    upstream: Upstream, tmp_path: Path
) -> None:
    (upstream.work / "a").mkdir()
    os.symlink("..", upstream.work / "a" / "up")  # a/up -> the root: inside
    os.symlink("a/up/..", upstream.work / "esc")  # lexically inside, really the parent
    sha = upstream.commit({})
    mirror = Mirror.sync(upstream.url, tmp_path / "mirror")
    with pytest.raises(UnsafeTree, match="esc"):
        mirror.export(sha, tmp_path / "export")


@pytest.mark.parametrize("name", ["..", ".git"])
def test_export_refuses_crafted_tree_entries(upstream: Upstream, tmp_path: Path, name: str) -> None:
    blob = upstream.blob("evil")
    sha = upstream.commit_tree(f"100644 blob {blob}\t{name}\n")
    mirror = Mirror.sync(upstream.url, tmp_path / "mirror")
    with pytest.raises(UnsafeTree):
        mirror.export(sha, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_export_turns_submodules_into_empty_directories(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"a.txt": "1"})
    git(upstream.work, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},vendor/lib")
    git(upstream.work, "commit", "-q", "-m", "add a submodule")
    sha = upstream.push()
    mirror = Mirror.sync(upstream.url, tmp_path / "mirror")
    mirror.export(sha, tmp_path / "export")
    assert (tmp_path / "export" / "vendor" / "lib").is_dir()
    assert list((tmp_path / "export" / "vendor" / "lib").iterdir()) == []
    assert mirror.changed_paths(None, sha) == ["a.txt"]


def test_sha256_repositories_fail_with_a_clear_error(tmp_path: Path) -> None:
    """libgit2 in this pygit2 is built without SHA-256 object support: say so."""
    bare = tmp_path / "sha256.git"
    git(tmp_path, "init", "-q", "--bare", "--object-format=sha256", str(bare))
    with pytest.raises(GitError, match="SHA-256"):
        Mirror.sync(str(bare), tmp_path / "mirror")
    with pytest.raises(GitError, match="SHA-256"):
        Mirror.sync(str(bare), bare)  # opening one as the mirror itself


# --- private repositories over http with a token ----------------------------------


class _GitHttpBackend(BaseHTTPRequestHandler):
    """git's own smart-HTTP CGI behind HTTP basic auth, on 127.0.0.1."""

    project_root: Path
    expected_auth: str

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().strip(), 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        body = self._body()
        if self.headers.get("Authorization") != self.expected_auth:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "REMOTE_USER": "kua",
        }
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        headers = [line.split(b": ", 1) for line in head.split(b"\r\n") if line]
        status = next((int(v.split()[0]) for k, v in headers if k == b"Status"), 200)
        self.send_response(status)
        for key, value in headers:
            if key != b"Status":
                self.send_header(key.decode(), value.decode())
        # libgit2 reads no body that is delimited only by the connection's close.
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def private_http_repo(upstream: Upstream) -> Iterator[tuple[str, str]]:
    """(url, token): `upstream` served at http://127.0.0.1:<port>/upstream.git."""
    token = "s3cret-token"
    handler = type(
        "Handler",
        (_GitHttpBackend,),
        {
            "project_root": upstream.bare.parent,
            "expected_auth": "Basic " + base64.b64encode(f"git:{token}".encode()).decode(),
        },
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/upstream.git", token
    finally:
        server.shutdown()
        server.server_close()


def test_private_repo_over_http_needs_the_token(
    upstream: Upstream, private_http_repo: tuple[str, str], tmp_path: Path
) -> None:
    url, token = private_http_repo
    head = upstream.commit({"a.txt": "1"})
    with pytest.raises(GitError, match="authentication"):
        Mirror.sync(url, tmp_path / "m1")
    with pytest.raises(GitError, match="authentication"):  # asked once, no endless retry
        Mirror.sync(url, tmp_path / "m2", Credentials(token="wrong"))
    mirror = Mirror.sync(url, tmp_path / "m3", Credentials(token=token))
    assert mirror.branch_head("main") == head


def test_an_empty_url_is_a_git_error(tmp_path):
    # pygit2 raised InvalidSpecError ("cannot set empty URL"), past every GitError handler
    with pytest.raises(GitError, match="empty"):
        Mirror.sync("", tmp_path / "mirror.git")
