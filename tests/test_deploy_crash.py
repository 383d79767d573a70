"""SIGKILL the server mid-build and mid-verify: the restart tells the truth and goes on.
SIGTERM mid-build or at a held gate: the server stops promptly and records why."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kuadeploy.tokens import token_hash
from tests.support import ROOT
from tests.test_serve import free_port

pytestmark = pytest.mark.docker
TOKEN = "t-admin"


class Server:
    def __init__(self, tmp: Path, docker: str):
        self.tmp = tmp
        self.port = free_port()
        self.config = tmp / "kuadeploy.toml"
        self.config.write_text(
            f'data_dir = "{tmp / "data"}"\nlisten = "127.0.0.1:{self.port}"\n'
            f'[servers.a]\ndocker = "{docker}"\n'
            f"[deploy]\nhealth_poll_s = 0.1\n"
            f'[[tokens]]\nactor = "admin"\nrole = "admin"\nsha256 = "{token_hash(TOKEN)}"\n'
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kuadeploy", "serve", "--config", str(self.config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                self.call("GET", "/healthz")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise AssertionError("server did not come up")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()  # never leave a hung server behind, then say it hung
                raise AssertionError(f"SIGTERM did not stop the server in {timeout:g}s") from None

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data, method=method)
        req.add_header("Authorization", f"Bearer {TOKEN}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def register(self, app: str, entry: dict) -> None:
        status, body = self.call("PUT", f"/api/v1/apps/{app}", entry)
        assert status in (200, 201), body

    def deploy(self, app: str) -> str:
        status, body = self.call("POST", f"/api/v1/apps/{app}/deploy", {})
        assert status == 202, body
        return body["deploy_id"]

    def wait_recovery(self, app: str, interrupted: str) -> dict:
        """The deploy start-up queued to restore the verified release: succeeded,
        verified, from the retained image (no fetch, no build)."""
        _, latest = self.call("GET", f"/api/v1/apps/{app}/progress")
        assert latest["id"] != interrupted and latest["trigger"] == "recovery", latest
        view = self.wait(latest["id"], finished)
        assert view["status"] == "succeeded", view
        assert [s["name"] for s in view["steps"]] == ["recreate", "verify"], view
        return view

    def wait(self, deploy_id: str, until, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while True:
            _, view = self.call("GET", f"/api/v1/deploys/{deploy_id}")
            if until(view):
                return view
            assert time.time() < deadline, view
            time.sleep(0.1)


def finished(view: dict) -> bool:
    return view["status"] not in ("queued", "running", "awaiting_approval")


def in_step(name: str):
    def check(view: dict) -> bool:
        return any(s["name"] == name and s["status"] == "running" for s in view["steps"])

    return check


@pytest.fixture
def server(tmp_path, docker_a) -> Iterator[Server]:
    """A started `kuadeploy serve`, stopped at the end whatever the test did to it."""
    server = Server(tmp_path, docker_a)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("where", ["build", "verify"])
def test_sigkill_mid_deploy_then_restart_is_truthful(server, sample_app, where):
    entry = sample_app.entry("a")
    server.register(sample_app.name, entry)
    good = server.wait(server.deploy(sample_app.name), finished)
    assert good["status"] == "succeeded"
    if where == "build":
        sample_app.slow_build(30)
    else:
        entry["verify"]["stable_s"] = 8  # a stability window to be killed in (and recovered)
        server.register(sample_app.name, entry)
        sample_app.healthy(note="verify me")
    victim = server.deploy(sample_app.name)
    server.wait(victim, in_step(where))
    server.kill()

    server.start()
    view = server.wait(victim, finished)
    assert view["status"] == "interrupted" and where in view["reason"], view
    assert not (server.tmp / "data" / "work" / victim).exists()  # cleaned at start-up
    if where == "verify":  # an unverified release ran: the verified one is restored
        recovery = server.wait_recovery(sample_app.name, victim)
        assert recovery["sha"] == good["sha"] and recovery["image_id"] == good["image_id"]
    _, rt = server.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["release"]["sha"] == good["sha"]
    assert rt["container"]["sha"] == good["sha"] and rt["drift"] is False

    entry["verify"]["stable_s"] = 1
    server.register(sample_app.name, entry)
    sample_app.healthy(note="after the crash")
    after = server.wait(server.deploy(sample_app.name), finished)
    assert after["status"] == "succeeded" and after["sha"] == sample_app.head
    _, rt = server.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["drift"] is False and rt["release"]["sha"] == sample_app.head
    _, verify = server.call("GET", "/api/v1/audit/verify?full=1")
    assert verify["ok"] is True


def test_a_deploy_queued_behind_a_killed_one_runs_after_the_restart(server, sample_app):
    server.register(sample_app.name, sample_app.entry("a"))
    assert server.wait(server.deploy(sample_app.name), finished)["status"] == "succeeded"
    sample_app.slow_build(30)
    victim = server.deploy(sample_app.name)
    server.wait(victim, in_step("build"))
    sample_app.healthy(note="queued behind the slow build")
    queued = server.deploy(sample_app.name)
    _, view = server.call("GET", f"/api/v1/deploys/{queued}")
    assert view["status"] == "queued", view
    server.kill()

    server.start()  # no request after this: the queue resumes by itself
    assert server.wait(victim, finished)["status"] == "interrupted"
    view = server.wait(queued, finished)
    assert view["status"] == "succeeded" and view["sha"] == sample_app.head, view
    _, rt = server.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["container"]["sha"] == sample_app.head and rt["drift"] is False


def test_sigterm_mid_build_stops_promptly_and_records_the_interruption(server, sample_app):
    server.register(sample_app.name, sample_app.entry("a"))
    good = server.wait(server.deploy(sample_app.name), finished)
    sample_app.slow_build(30)
    victim = server.deploy(sample_app.name)
    server.wait(victim, in_step("build"))
    started = time.time()
    server.stop()  # SIGTERM: finish what is quick, record what is cut short
    assert server.proc.returncode == 0 and time.time() - started < 15
    server.start()
    view = server.wait(victim, finished)
    assert view["status"] == "interrupted" and "stopped during build" in view["reason"]
    _, rt = server.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["container"]["sha"] == good["sha"] and rt["drift"] is False


@pytest.mark.parametrize("stream_open", [False, True])
def test_sigterm_at_a_held_gate_stops_promptly_and_records_the_interruption(
    server, sample_app, stream_open
):
    server.register(sample_app.name, sample_app.entry("a"))
    sample_app.add_migration()  # approval "required": the first deploy holds
    victim = server.deploy(sample_app.name)
    server.wait(victim, lambda view: view["status"] == "awaiting_approval")
    # Without a stream the runner's cancel lands as the closed notifier wakes the
    # gate; an open stream keeps the shutdown busy long enough for the gate to see
    # the closed notifier first. Each timing once hung the server.
    with contextlib.ExitStack() as stack:
        if stream_open:
            req = urllib.request.Request(f"http://127.0.0.1:{server.port}/api/v1/events/stream")
            req.add_header("Authorization", f"Bearer {TOKEN}")
            stack.enter_context(urllib.request.urlopen(req, timeout=10))
        started = time.time()
        server.stop(timeout=10)
    assert server.proc.returncode == 0 and time.time() - started < 10
    server.start()  # recorded by the stopping server, not by the restart
    view = server.wait(victim, finished)
    assert view["status"] == "interrupted", view
    assert "stopped during migration_gate" in view["reason"], view
    assert ("migration_gate", "failed") in [(s["name"], s["status"]) for s in view["steps"]]


def test_sigterm_mid_verify_restores_the_verified_release_at_the_next_start(server, sample_app):
    """A stop skips the rollback to be quick; the next start makes up for it."""
    entry = sample_app.entry("a")
    server.register(sample_app.name, entry)
    good = server.wait(server.deploy(sample_app.name), finished)
    entry["verify"]["stable_s"] = 8
    server.register(sample_app.name, entry)
    sample_app.healthy(note="verify me")
    victim = server.deploy(sample_app.name)
    server.wait(victim, in_step("verify"))
    server.stop()
    assert server.proc.returncode == 0
    server.start()
    view = server.wait(victim, finished)
    assert view["status"] == "interrupted" and "stopped during verify" in view["reason"]
    recovery = server.wait_recovery(sample_app.name, victim)
    assert recovery["sha"] == good["sha"]
    _, rt = server.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["container"]["sha"] == good["sha"] and rt["drift"] is False


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_interrupted_first_release_says_there_is_nothing_to_restore(server, sample_app, how):
    entry = sample_app.entry("a")
    entry["verify"]["stable_s"] = 8
    server.register(sample_app.name, entry)
    victim = server.deploy(sample_app.name)
    server.wait(victim, in_step("verify"))
    server.kill() if how == "sigkill" else server.stop()
    server.start()
    view = server.wait(victim, finished)
    assert view["status"] == "interrupted", view
    assert "no verified release to restore" in view["reason"], view
    _, latest = server.call("GET", f"/api/v1/apps/{sample_app.name}/progress")
    assert latest["id"] == victim  # no recovery deploy queued
    server.stop()
    server.start()  # said once, not at every start
    _, view = server.call("GET", f"/api/v1/deploys/{victim}")
    assert view["reason"].count("no verified release") == 1, view


def test_sigterm_during_a_cancels_rollback_records_one_interruption(server, sample_app):
    entry = sample_app.entry("a")
    entry["verify"]["stable_s"] = 4  # the rollback's verify waits this: SIGTERM lands in it
    server.register(sample_app.name, entry)
    server.wait(server.deploy(sample_app.name), finished)
    sample_app.health_status(500)
    victim = server.deploy(sample_app.name)
    server.wait(victim, in_step("verify"))
    status, _ = server.call("POST", f"/api/v1/deploys/{victim}/cancel")
    assert status == 200
    server.wait(victim, in_step("rollback"))
    server.stop()
    assert server.proc.returncode == 0
    server.start()  # recorded by the stopping server, not by the restart
    view = server.wait(victim, finished)
    assert view["status"] == "interrupted", view
    assert "stopped during rollback" in view["reason"], view
    _, page = server.call("GET", "/api/v1/events?limit=1000")
    types = [e["type"] for e in page["events"] if e["stream"] == f"deploy/{victim}"]
    assert types[-2:] == ["StepFailed", "DeployInterrupted"], types
