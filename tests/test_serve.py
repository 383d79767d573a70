"""`kuadeploy serve` as a real process: first boot, JSON logs, graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp: Path, port: int, config: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KUA_LISTEN": f"127.0.0.1:{port}"}
    env.pop("KUA_CONFIG", None)
    args = [sys.executable, "-m", "kuadeploy", "serve"]
    if config:
        args += ["--config", str(config)]
    proc = subprocess.Popen(
        args, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read()) from None
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start")


def request(port: int, method: str, path: str, token: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def test_first_boot_without_config_then_graceful_stop(tmp_path):
    port = free_port()
    proc = start(tmp_path, port)
    try:
        line = proc.stdout.readline()
        assert "Created an admin token" in line
        token = line.strip().rsplit(" ", 1)[-1]
        assert token not in (tmp_path / "data" / "tokens.json").read_text()
        entry = {"server": "local", "repo": "https://x/y.git", "branch": "main"}
        status, body = request(port, "PUT", "/api/v1/apps/web", token, entry)
        assert status == 201 and body["version"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    access = [x for x in lines if x["logger"] == "kuadeploy.access"]
    put = next(x for x in access if x["method"] == "PUT")
    assert put["status"] == 201 and put["actor"] == "admin" and put["path"] == "/api/v1/apps/web"
    assert isinstance(put["ms"], float)
    assert token not in err  # never a token in the logs
    assert any(x.get("msg") == "stopped" for x in lines)

    proc = start(tmp_path, port)  # second boot: no new token, data kept
    try:
        status, body = request(port, "GET", "/api/v1/apps/web", token)
        assert status == 200 and body["version"] == 1
        # an open SSE stream must not hold up a graceful stop
        stream = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/events/stream")
        stream.add_header("Authorization", f"Bearer {token}")
        held = urllib.request.urlopen(stream, timeout=10)
    finally:
        started = time.time()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and time.time() - started < 10
    assert "Created an admin token" not in out
    held.close()


BAD_CONFIGS = [
    ("listen = 5\n", {}, "listen"),
    ('listen = "nowhere"\n', {}, "listen"),
    ('listen = "127.0.0.1:99999"\n', {}, "listen"),
    ("", {"KUA_LISTEN": "abc"}, "KUA_LISTEN"),
    ('[[tokens]]\nactor = "a"\nrole = "admin"\nsha256 = "not hex"\n', {}, "sha256"),
    ('[[tokens]]\nactor = "a"\nrole = "root"\nsha256 = "' + "0" * 64 + '"\n', {}, "role"),
    # values the server would take and then misbehave on: spin, hammer, fail every deploy
    ("sse_heartbeat_s = 0\n", {}, "sse_heartbeat_s"),
    ("[deploy]\nhealth_poll_s = 0\n", {}, "health_poll_s"),
    ("[deploy]\nfetch_timeout_s = -5\n", {}, "fetch_timeout_s"),
    ('[servers.local]\ndocker = "/var/run/docker.sock"\n', {}, "docker"),
]


@pytest.mark.parametrize(("toml", "env", "named"), BAD_CONFIGS)
def test_bad_config_is_a_one_line_error(tmp_path, toml, env, named):
    config = tmp_path / "k.toml"
    config.write_text('data_dir = "d"\n' + toml)
    proc = serve_once(tmp_path, config, env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("kuadeploy:") and named in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line, no traceback
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_a_taken_port_is_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve_once(tmp_path, None, {"KUA_LISTEN": f"127.0.0.1:{port}"})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("{")]
    assert lines == [f"kuadeploy: cannot start: cannot listen on 127.0.0.1:{port}: {_IN_USE}"]


_IN_USE = os.strerror(98)


def serve_once(tmp: Path, config: Path | None, env: dict[str, str]) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "kuadeploy", "serve"] + (
        ["--config", str(config)] if config else []
    )
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full_env.pop("KUA_CONFIG", None)
    return subprocess.run(args, cwd=tmp, capture_output=True, text=True, env=full_env, timeout=30)


def test_serve_refuses_a_rewound_ledger_and_accepts_it_when_told(tmp_path):
    import sqlite3

    port = free_port()
    proc = start(tmp_path, port)
    token = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
    for i in range(5):
        entry = {"server": "local", "repo": "https://x/y.git", "branch": f"b{i}"}
        request(port, "PUT", "/api/v1/apps/web", token, entry)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    conn = sqlite3.connect(tmp_path / "data" / "ledger.db", isolation_level=None)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DELETE FROM events WHERE seq > 3")
    conn.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KUA_LISTEN": f"127.0.0.1:{port}"}
    refused = subprocess.run(
        [sys.executable, "-m", "kuadeploy", "serve"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "cannot start" in refused.stderr and "--accept-ledger-rewind" in refused.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "kuadeploy", "serve", "--accept-ledger-rewind"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                _status, body = request(port, "GET", "/api/v1/events?after=3", token)
                break
            except OSError:
                time.sleep(0.1)
        assert [e["type"] for e in body["events"]] == ["CheckpointOverridden"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def _serve_once(data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KUA_DATA_DIR": str(data_dir)}
    env["KUA_LISTEN"] = f"127.0.0.1:{free_port()}"
    env.pop("KUA_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "kuadeploy", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=data_dir.parent,
    )


@pytest.mark.parametrize("case", ["ledger-not-a-database", "data-dir-is-a-file", "tokens-garbled"])
def test_an_unusable_data_dir_stops_serve_with_one_line(tmp_path, case):
    data = tmp_path / "data"
    if case == "data-dir-is-a-file":
        data.write_text("x")
    else:
        data.mkdir()
        if case == "ledger-not-a-database":
            (data / "ledger.db").write_bytes(b"not sqlite at all " * 512)
        else:
            (data / "tokens.json").write_text("{bad")
    proc = _serve_once(data)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("kuadeploy: cannot start: ")


def test_a_token_file_with_a_malformed_hash_stops_serve_with_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    bad = {"tokens": [{"actor": "ci", "role": "reader", "sha256": "not-hex"}]}
    (data / "tokens.json").write_text(json.dumps(bad))
    proc = _serve_once(data)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("kuadeploy: cannot start: ")
