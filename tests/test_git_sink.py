"""The git export sink against a real server on 127.0.0.1 and real bare repositories,
checked with the `git` CLI: one commit per registry change, each reproducing the
registry export at its seq; failures never block mutations; restarts catch up."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path

import msgspec
import pytest

from kuadeploy import events as ev
from kuadeploy.config import DeployConfig, ExportConfig, GitSinkConfig
from kuadeploy.ledger import NewEvent
from kuadeploy.sinks.git import GitSink
from kuadeploy.sinks.mirror import Marker, commit_message, parse_marker
from tests.api_support import entry_doc, make_config, running
from tests.support import entry
from tests.webhook_support import stalled_forge  # noqa: F401  (fixture)

BRANCH = "registry"


def git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", f"--git-dir={repo}", *args], capture_output=True, text=True, check=False
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout


def mirror_commits(repo: Path, branch: str = BRANCH) -> list[tuple[str, int]]:
    """(commit, Kua-Seq) of the branch, oldest first."""
    fmt = "%H %(trailers:key=Kua-Seq,valueonly,separator=)"
    lines = git(repo, "log", "--reverse", "--first-parent", f"--format={fmt}", branch)
    return [(sha, int(seq)) for sha, seq in (line.split() for line in lines.splitlines())]


def sink_config(tmp_path: Path, repo: str | Path, branch: str = BRANCH):
    git_sink = GitSinkConfig(repo=str(repo), branch=branch)
    return make_config(tmp_path / "data", export=ExportConfig(git=git_sink))


async def sink_status(api) -> dict:
    _, body, _ = await api.call("GET", "/healthz", role=None)
    return body["sinks"]["git"]


async def wait_mirrored(api, seq: int, timeout: float = 20) -> dict:
    """Until the sink reports `seq` mirrored with nothing queued."""
    deadline = time.monotonic() + timeout
    while True:
        status = await sink_status(api)
        if status["ok"] and status["last_seq"] == seq and status["pending"] == 0:
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)


async def wait_failing(api, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = await sink_status(api)
        if not status["ok"]:
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)


async def assert_reproduces(api, repo: Path, seqs: list[int], tmp_path: Path) -> None:
    """Checking out each commit gives registry.json == the export at that commit's seq."""
    commits = mirror_commits(repo)
    assert [seq for _, seq in commits] == seqs
    work = tmp_path / f"checkout-{len(seqs)}-{time.monotonic_ns()}"
    subprocess.run(["git", "clone", "-q", "-b", BRANCH, str(repo), str(work)], check=True)
    for sha, seq in commits:
        subprocess.run(["git", "-C", str(work), "checkout", "-q", sha], check=True)
        mirrored = json.loads((work / "registry.json").read_text())
        status, exported, _ = await api.call("GET", f"/api/v1/registry/export?at={seq}")
        assert status == 200
        assert mirrored == exported, f"commit {sha} (seq {seq})"
        trailer = git(repo, "log", "-1", "--format=%(trailers:key=Kua-Hash,valueonly)", sha)
        assert trailer.strip() == exported["as_of"]["hash"]
    git(repo, "fsck", "--strict")


async def scripted_history(api) -> list[int]:
    """PUT/PATCH/DELETE across two apps, with a no-op and a dry run that append nothing."""
    calls = [
        ("PUT", "web", entry_doc()),
        ("PUT", "api", entry_doc("dev")),
        ("PATCH", "web", {"container": {"env": {"A": "1"}}, "keep_releases": 3}),
        ("PUT", "web", entry_doc("release")),
        ("DELETE", "api", None),
        ("PUT", "api", entry_doc("main")),
        ("PATCH", "web", {"verify": {"health_url": "http://127.0.0.1:9/healthz"}}),
        ("DELETE", "web", None),
    ]
    seqs = []
    for method, app, body in calls:
        status, out, _ = await api.call(method, f"/api/v1/apps/{app}", json=body)
        assert status in (200, 201), out
        seqs.append(out["seq"])
    status, out, _ = await api.call("PUT", "/api/v1/apps/api", json=entry_doc("main"))
    assert status == 200 and out["unchanged"] is True
    status, _, _ = await api.call("PUT", "/api/v1/apps/x?dry_run=1", json=entry_doc())
    assert status == 200
    return seqs


async def test_commits_reproduce_the_registry_at_each_seq(tmp_path):
    repo = tmp_path / "mirror.git"  # does not exist: the sink creates a bare repository
    async with running(sink_config(tmp_path, repo)) as api:
        seqs = await scripted_history(api)
        assert seqs == list(range(1, 9))
        await wait_mirrored(api, 8)
        await assert_reproduces(api, repo, seqs, tmp_path)
        assert git(repo, "rev-parse", "--is-bare-repository").strip() == "true"
        subject = git(repo, "log", "-1", "--format=%an|%s", BRANCH).strip()
        assert subject == "admin|admin: AppRemoved web (seq 8)"
        changed = git(repo, "show", "--format=", "--name-only", f"{BRANCH}~1").split()
        assert changed == ["registry.json"]


async def test_several_registry_events_in_one_batch_get_one_commit_each(tmp_path):
    repo = tmp_path / "mirror.git"
    async with running(sink_config(tmp_path, repo)) as api:
        # One atomic append of three registry events: one committed batch.
        items = [
            NewEvent(f"app/{name}", ev.AppRegistered(app=name, entry=entry(name)), 0)
            for name in ("a", "b", "c")
        ]
        await api.service.ledger.append(items, actor="kavi")
        # And concurrent PUTs, which the ledger group-commits.
        results = await asyncio.gather(
            *(api.call("PUT", f"/api/v1/apps/app-{i}", json=entry_doc()) for i in range(20))
        )
        assert all(status == 201 for status, _, _ in results)
        await wait_mirrored(api, 23)
        await assert_reproduces(api, repo, list(range(1, 24)), tmp_path)
        authors = git(repo, "log", "--reverse", "--format=%an", BRANCH).split()
        assert authors[:3] == ["kavi"] * 3 and set(authors[3:]) == {"admin"}


async def test_broken_sink_never_blocks_mutations_and_catches_up_once_fixed(tmp_path):
    repo = tmp_path / "mirror.git"
    repo.write_text("a regular file where the repository should be\n")
    async with running(sink_config(tmp_path, repo)) as api:
        for i, (method, body) in enumerate(
            [("PUT", entry_doc()), ("PATCH", {"branch": "dev"}), ("PUT", entry_doc("x"))]
        ):
            started = time.monotonic()
            status, _, _ = await api.call(method, "/api/v1/apps/web", json=body)
            assert status == (201 if i == 0 else 200)
            assert time.monotonic() - started < 1.0
        failing = await wait_failing(api)
        assert "mirror.git" in failing["error"] and failing["failures"] >= 1
        assert failing["last_seq"] == 0
        _, health, _ = await api.call("GET", "/healthz", role=None)
        assert health["status"] == "ok" and health["head_seq"] == 3
        _, metrics, _ = await api.call("GET", "/metrics", role=None)
        line = next(
            line
            for line in metrics.decode().splitlines()
            if line.startswith("kuadeploy_export_sink_failures_total ")
        )
        assert float(line.split()[1]) >= 1

        repo.unlink()  # fixed: the next change brings the mirror up to date
        status, _, _ = await api.call("DELETE", "/api/v1/apps/web")
        assert status == 200
        recovered = await wait_mirrored(api, 4)
        assert recovered["error"] is None
        await assert_reproduces(api, repo, [1, 2, 3, 4], tmp_path)


async def test_restart_adds_no_duplicates_and_catches_up_missed_changes(tmp_path):
    repo = tmp_path / "mirror.git"
    config = sink_config(tmp_path, repo)
    async with running(config) as api:
        for branch in ("a", "b", "c"):
            await api.call("PUT", "/api/v1/apps/web", json=entry_doc(branch))
    # Closing flushed what was queued.
    assert [seq for _, seq in mirror_commits(repo)] == [1, 2, 3]
    async with running(config) as api:
        await wait_mirrored(api, 3)
        assert len(mirror_commits(repo)) == 3
    # Changes made while no sink is configured are mirrored on the next start with one.
    async with running(make_config(tmp_path / "data")) as api:
        await api.call("PATCH", "/api/v1/apps/web", json={"branch": "d"})
        await api.call("PUT", "/api/v1/apps/api", json=entry_doc())
    async with running(config) as api:
        await wait_mirrored(api, 5)
        await assert_reproduces(api, repo, [1, 2, 3, 4, 5], tmp_path)


async def test_legacy_import_is_mirrored_one_commit_per_event(tmp_path):
    legacy = tmp_path / "legacy.json"
    apps = {name: entry_doc() for name in ("web", "api", "db")}
    legacy.write_bytes(msgspec.json.encode({"apps": apps}))
    config = msgspec.structs.replace(
        sink_config(tmp_path, tmp_path / "mirror.git"), legacy_registry=str(legacy)
    )
    async with running(config) as api:
        await wait_mirrored(api, 4)
        await assert_reproduces(api, tmp_path / "mirror.git", [1, 2, 3, 4], tmp_path)
        first = git(tmp_path / "mirror.git", "log", "--reverse", "--format=%s", BRANCH)
        assert first.splitlines()[0].startswith("system: LegacyRegistryImported")


async def test_files_beside_registry_json_are_kept(tmp_path):
    repo = tmp_path / "mirror.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", BRANCH, str(work)], check=True)
    (work / "README.md").write_text("The registry, mirrored by kuadeploy.\n")
    for args in (
        ["add", "README.md"],
        ["-c", "user.name=kavi", "-c", "user.email=k@example.org", "commit", "-qm", "readme"],
        ["push", "-q", str(repo), BRANCH],
    ):
        subprocess.run(["git", "-C", str(work), *args], check=True)
    async with running(sink_config(tmp_path, repo)) as api:
        await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        await wait_mirrored(api, 1)
    assert git(repo, "ls-tree", "--name-only", BRANCH).split() == ["README.md", "registry.json"]
    assert git(repo, "log", "--format=%s", BRANCH).splitlines()[1] == "readme"


async def test_a_branch_mirroring_another_ledger_is_refused(tmp_path):
    repo = tmp_path / "mirror.git"
    async with running(sink_config(tmp_path / "one", repo)) as api:
        await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        await wait_mirrored(api, 1)
    async with running(sink_config(tmp_path / "two", repo)) as api:
        status, _, _ = await api.call("PUT", "/api/v1/apps/api", json=entry_doc("other"))
        assert status == 201
        failing = await wait_failing(api)
        assert "mirrors another ledger" in failing["error"]
    assert [seq for _, seq in mirror_commits(repo)] == [1]


async def test_remote_url_is_pushed_and_resumed_from_the_remote(tmp_path):
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    config = sink_config(tmp_path, f"file://{remote}")
    async with running(config) as api:
        await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        await api.call("PATCH", "/api/v1/apps/web", json={"branch": "dev"})
        await wait_mirrored(api, 2)
        await assert_reproduces(api, remote, [1, 2], tmp_path)
    # The local copy is a cache: without it the position comes from the remote.
    for local in (tmp_path / "data" / "sinks").iterdir():
        subprocess.run(["rm", "-rf", str(local)], check=True)
    async with running(config) as api:
        await api.call("DELETE", "/api/v1/apps/web")
        await wait_mirrored(api, 3)
        await assert_reproduces(api, remote, [1, 2, 3], tmp_path)


@pytest.mark.parametrize("branch", ["a..b", "-x"])
async def test_invalid_branch_is_reported(tmp_path, branch):
    async with running(sink_config(tmp_path, tmp_path / "mirror.git", branch)) as api:
        status, _, _ = await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        assert status == 201
        failing = await wait_failing(api)
        assert "not a valid git branch name" in failing["error"]


async def test_a_remote_that_never_answers_is_reported_and_lets_the_server_stop(
    tmp_path,
    stalled_forge,  # noqa: F811
):
    """libgit2 waits forever on a server that accepts and never answers: the sink's
    transport is bounded like a deploy's fetch, so the hang becomes a failure, and
    its thread ends (a thread stuck in libgit2 keeps the process from ever exiting)."""
    git_sink = GitSinkConfig(repo=f"{stalled_forge}/mirror.git", branch=BRANCH)
    deploy = DeployConfig(fetch_timeout_s=1)
    config = make_config(tmp_path / "data", export=ExportConfig(git=git_sink), deploy=deploy)
    async with running(config) as api:
        started = time.monotonic()
        status, _, _ = await api.call("PUT", "/api/v1/apps/web", json=entry_doc())
        assert status == 201 and time.monotonic() - started < 1.0
        failing = await wait_failing(api, timeout=10)
        assert "timed out" in failing["error"], failing
    deadline = time.monotonic() + 10
    while any(t.name.startswith("git-sink") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the git sink's thread never ends"
        await asyncio.sleep(0.1)


async def test_queue_overflow_falls_back_to_the_ledger(tmp_path):
    """A sink down through more changes than it queues still mirrors every one of them."""
    repo = tmp_path / "second.git"
    repo.write_text("not yet\n")
    async with running(make_config(tmp_path / "data")) as api:
        reports: list[dict] = []
        sink = GitSink(
            GitSinkConfig(repo=str(repo)), api.service.ledger, str(tmp_path), reports.append, 2
        )
        sink.start()
        try:
            for i in range(5):
                await api.call("PUT", "/api/v1/apps/web", json=entry_doc(f"b{i}"))
            while not reports or reports[-1]["ok"] or reports[-1]["pending"] > 2:
                await asyncio.sleep(0.02)
            repo.unlink()
            await api.call("DELETE", "/api/v1/apps/web")
            while sink.position != 6 or sink.error:
                await asyncio.sleep(0.02)
        finally:
            await sink.close()
        await assert_reproduces(api, repo, [1, 2, 3, 4, 5, 6], tmp_path)


def test_commit_message_carries_actor_change_seq_and_hash():
    event = ev.envelope(
        ev.AppPatched(app="web", entry=entry(), patch={"branch": "main"}),
        seq=7,
        ts="2026-03-01T10:00:00.000000Z",
        stream="app/web",
        version=2,
        actor="webhook:infra/web",
    )
    message = commit_message(event, bytes(range(32)))
    assert message.splitlines()[0] == "webhook:infra/web: AppPatched web (seq 7)"
    assert parse_marker(message) == Marker(7, bytes(range(32)).hex())
    assert parse_marker("readme\n\nKua-Seq: 7\n") is None  # no hash: not ours
