"""What the HTTP benchmarks share: a server process on loopback, its CPU, the machine."""

from __future__ import annotations

import hashlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(name: str, cmd: list[str], port: int, log: Path) -> Server:
    """Start `cmd` (a server on 127.0.0.1:`port`) and wait until it accepts."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Server(name, url, proc)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{name} did not listen on {url}; see {log}")


def start_kuadeploy(directory: Path, token: str, extra_toml: str = "") -> Server:
    """`kuadeploy serve` on a free loopback port with a real data dir in `directory`, an
    admin token `token`, and one server whose engine is never reached."""
    port = free_port()
    config = directory / "kuadeploy.toml"
    config.write_text(
        f'data_dir = "{directory / "data"}"\n'
        f'listen = "127.0.0.1:{port}"\n'
        '[servers.local]\ndocker = "unix:///nonexistent/docker.sock"\n'
        '[[tokens]]\nactor = "bench"\nrole = "admin"\n'
        f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n' + extra_toml
    )
    cmd = [sys.executable, "-m", "kuadeploy", "serve", "--config", str(config)]
    return start("kuadeploy", cmd, port, directory / "kuadeploy.log")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
        f"load average {load:.2f} at start"
    )


def print_table(intro: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """The Markdown table every benchmark ends with, after a line on how it was measured."""
    print(f"\n{intro}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
