"""A fetch that hangs (a forge that accepts and never answers) must not outlive its
step: its thread ends, and no other git work, of this app or another, waits on it."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kuadeploy.adapters import git
from kuadeploy.config import DeployConfig
from kuadeploy.pipeline import source
from tests.api_support import entry_doc, make_config, running
from tests.deploy_support import deploy, wait_status
from tests.fixtures.testapp import git as run_git
from tests.image_support import free_port
from tests.test_adapters_git import Upstream
from tests.webhook_support import stalled_forge  # noqa: F401  (fixture)


async def test_timed_out_fetches_leave_no_thread_hanging(tmp_path, stalled_forge):  # noqa: F811
    # asyncio.to_thread's pool has min(32, cores + 4) threads: more hung fetches than
    # that, and every later fetch (and all other to_thread work) would wait forever.
    config = make_config(tmp_path / "data", deploy=DeployConfig(fetch_timeout_s=0.3))
    upstream = Upstream(tmp_path / "upstream")
    sha = upstream.commit({"Dockerfile": "FROM scratch\n"})
    async with running(config) as api:
        stuck = entry_doc(repo=f"{stalled_forge}/kua/stuck.git", container={"name": "stuck"})
        assert (await api.call("PUT", "/api/v1/apps/stuck", json=stuck))[0] == 201
        for _ in range(min(32, (os.cpu_count() or 1) + 4) + 2):
            view = await wait_status(api, await deploy(api, "stuck"), timeout=20)
            assert view["status"] == "failed", view
            assert "fetch timed out" in view["reason"], view
        fine = entry_doc(repo=upstream.url, container={"name": "fine"})
        assert (await api.call("PUT", "/api/v1/apps/fine", json=fine))[0] == 201
        view = await wait_status(api, await deploy(api, "fine"), timeout=20)
        fetch = view["steps"][0]
        assert (fetch["name"], fetch["status"]) == ("fetch", "succeeded"), view
        assert fetch["detail"]["sha"] == sha


def fetch(
    upstream: Upstream, tmp_path: Path, work: str, ended: threading.Event, url: str = ""
) -> str:
    mirror, work_dir = tmp_path / "repos" / "web", tmp_path / "work" / work
    args = (url or upstream.url, mirror, "main", None, False, None, work_dir, False, 10.0, ended)
    return source.fetch_and_export(*args)


@contextlib.contextmanager
def git_daemon(base: Path, on_connect: Callable[[], None]) -> Iterator[str]:
    """git://127.0.0.1:PORT/ of a real `git daemon` serving `base`, reached through a
    relay that calls on_connect() as each fetch connects: something happens while a
    fetch is under way."""
    daemon_port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
         "--listen=127.0.0.1", f"--port={daemon_port}", str(base)],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    relay = socket.create_server(("127.0.0.1", 0))
    relay.settimeout(0.2)
    done = threading.Event()

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not done.is_set():
            try:
                client = relay.accept()[0]
            except TimeoutError:
                continue
            on_connect()
            upstream = socket.create_connection(("127.0.0.1", daemon_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    for _ in range(100):  # until the daemon listens
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", daemon_port)):
            break
        time.sleep(0.05)
    acceptor = threading.Thread(target=accept)
    acceptor.start()
    try:
        yield f"git://127.0.0.1:{relay.getsockname()[1]}/"
    finally:
        done.set()
        acceptor.join()
        relay.close()
        daemon.terminate()
        daemon.wait()


def test_one_mirror_serves_one_fetch_at_a_time(tmp_path):
    """A run that timed out or was cancelled leaves its thread fetching; the next run
    of the app fetches into the same mirror meanwhile."""
    upstream = Upstream(tmp_path / "upstream")
    for i in range(3):
        upstream.commit({f"f{i}": "x" * 100_000})
    heads: list[str] = []
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            heads.append(fetch(upstream, tmp_path, f"d{k}", threading.Event()))
        except BaseException as exc:
            errors.append(exc)

    for _ in range(5):
        shutil.rmtree(tmp_path / "repos", ignore_errors=True)
        threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert set(heads) == {run_git(upstream.work, "rev-parse", "HEAD")}


def test_a_run_that_ended_meanwhile_keeps_no_export(tmp_path):
    upstream = Upstream(tmp_path / "upstream")
    upstream.commit({"Dockerfile": "FROM scratch\n"})
    ended = threading.Event()
    # the run ends while its thread waits for the mirror: nothing is fetched or written
    lock = source.mirror_lock(tmp_path / "repos" / "web")
    errors: list[str] = []
    with lock:
        waiting = threading.Thread(target=lambda: errors.append(_fails(upstream, tmp_path, ended)))
        waiting.start()
        ended.set()
    waiting.join()
    assert errors == ["the deploy ended before its fetch began"]
    assert not (tmp_path / "work" / "late").exists()
    # the run ends while its thread fetches: the thread removes the export it then makes
    ended = threading.Event()
    with git_daemon(upstream.bare.parent, ended.set) as base:
        fetch(upstream, tmp_path, "late", ended, url=base + upstream.bare.name)
    assert ended.is_set()
    assert not (tmp_path / "work" / "late").exists()
    fetch(upstream, tmp_path, "kept", threading.Event())  # the same fetch, run not ended
    assert (tmp_path / "work" / "kept" / "src" / "Dockerfile").exists()


def _fails(upstream: Upstream, tmp_path: Path, ended: threading.Event) -> str:
    try:
        fetch(upstream, tmp_path, "late", ended)
    except git.GitError as exc:
        return str(exc)
    return "fetched"
