#!/usr/bin/env python3
"""API benchmarks over loopback, each next to a bare aiohttp handler (the ceiling), in one run.

    python scripts/bench_api.py [--seconds 3] [--dir /path/on/the/disk]

Both servers run as separate processes of this Python, each on its own event loop
(`kuadeploy serve` with a real data dir; the bare one returns the very bytes ours
answered), and one load generator drives both the same way: wrk (Debian package
`wrk`, one thread, keep-alive), so that on a 2-core machine the client has a core
and the server the other. PATCHes are durable (synchronous=FULL, group commit) and
each one changes its entry, so every request appends an event. Prints a Markdown
table (measure, kuadeploy, ceiling, ratio, target, met). Webhook acknowledgement
latency is measured by scripts/bench_webhook.py (its forge is a loopback port).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    Server,
    cpu_seconds,
    free_port,
    machine,
    print_table,
    start,
    start_kuadeploy,
)

TOKEN = "bench-admin-token"
APPS = 64
ROWS: list[tuple[str, str, str, str, str, str]] = []


def row(measure: str, ours: str, ceiling: str, ratio: str, target: str, met: str) -> None:
    ROWS.append((measure, ours, ceiling, ratio, target, met))
    print(f"  {measure}: {ours} vs {ceiling} -> {ratio} (target {target}) {met}", file=sys.stderr)


# --- the two servers ----------------------------------------------------------------


def bare_server(port: int, get_body: Path, patch_body: Path) -> None:
    """The ceiling: aiohttp with one handler per method, answering fixed bytes."""
    from aiohttp import web

    got, patched = get_body.read_bytes(), patch_body.read_bytes()

    async def get(request: web.Request) -> web.Response:
        return web.Response(body=got, content_type="application/json")

    async def patch(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=patched, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/apps/{app}", get)
    app.router.add_patch("/api/v1/apps/{app}", patch)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def start_ours(directory: Path) -> Server:
    return start_kuadeploy(directory, TOKEN)


def start_bare(directory: Path, get_body: bytes, patch_body: bytes) -> Server:
    port = free_port()
    (directory / "get.json").write_bytes(get_body)
    (directory / "patch.json").write_bytes(patch_body)
    cmd = [sys.executable, __file__, "--bare", str(port), str(directory)]
    return start("bare aiohttp", cmd, port, directory / "bare.log")


def call(method: str, url: str, doc: object = None, headers: dict | None = None):
    data = json.dumps(doc).encode() if doc is not None else None
    hdrs = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data, {**hdrs, **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def app_name(i: int) -> str:
    return f"bench-{i}"


def register_apps(ours: Server) -> tuple[bytes, bytes]:
    """64 apps; returns ours' answers to a GET and a PATCH, for the bare server to echo."""
    for i in range(APPS):
        entry = {
            "server": "local",
            "repo": f"https://forge.example.org/bench/{app_name(i)}.git",
            "branch": "main",
            "forge_repo": f"bench/{app_name(i)}",
            "container": {"name": app_name(i), "env": {"MODE": "bench"}},
        }
        status, body = call("PUT", f"{ours.url}/api/v1/apps/{app_name(i)}", entry)
        assert status in (200, 201), (status, body)
    patch = {"container": {"env": {"N": "setup"}}}
    status, patched = call("PATCH", f"{ours.url}/api/v1/apps/{app_name(0)}", patch)
    assert status == 200, (status, patched)
    status, got = call("GET", f"{ours.url}/api/v1/apps/{app_name(0)}")
    assert status == 200, (status, got)
    return got, patched


# --- the load generator -------------------------------------------------------------


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server CPU time per request: steadier than throughput on a shared machine


def best(loads: list[Load]) -> Load:
    """Best of interleaved rounds: noise from other work on the machine only ever slows."""
    return Load(
        max(x.rps for x in loads),
        min(x.p50_ms for x in loads),
        min(x.p99_ms for x in loads),
        min(x.cpu_us for x in loads),
    )


def lua_script(directory: Path, method: str) -> Path:
    """wrk request generator: round-robin over the apps. Every PATCH carries a value never
    sent before (the run id wrk is given, and a counter), so each one changes its entry."""
    value = "run .. '-' .. counter"
    patch = '\'{"container":{"env":{"N":"\' .. ' + value + " .. '\"}}}'"
    script = directory / f"{method.lower()}.lua"
    script.write_text(
        f"""
local counter = 0
local run = ""
local headers = {{["Authorization"] = "Bearer {TOKEN}", ["Content-Type"] = "application/json"}}
init = function(args)
  run = args[1]
end
request = function()
  counter = counter + 1
  local path = "/api/v1/apps/bench-" .. (counter % {APPS})
  return wrk.format("{method}", path, headers, {patch if method == "PATCH" else "nil"})
end
"""
    )
    return script


def parse_duration_ms(text: str) -> float:
    found = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if found is None:
        raise SystemExit(f"unexpected wrk duration {text!r}")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(server: Server, script: Path, clients: int, seconds: int) -> Load:
    before = cpu_seconds(server.process.pid)
    run = uuid.uuid4().hex[:12]  # the script's args: new PATCH values in every run
    load = ["-t1", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script)]
    out = subprocess.run(
        ["wrk", *load, server.url, "--", run],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = cpu_seconds(server.process.pid) - before
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise SystemExit(f"{m.group(1)} requests failed against {server.name}:\n{out}")
    if m := re.search(r"Socket errors: (.*)", out):
        raise SystemExit(f"socket errors against {server.name}: {m.group(1)}\n{out}")

    def find(pattern: str) -> str:
        found = re.search(pattern, out)
        if found is None:
            raise SystemExit(f"unexpected wrk output:\n{out}")
        return found.group(1)

    requests = int(find(r"(\d+) requests in"))
    return Load(
        float(find(r"Requests/sec:\s+([0-9.]+)")),
        parse_duration_ms(find(r"\s50%\s+(\S+)")),
        parse_duration_ms(find(r"\s99%\s+(\S+)")),
        used / max(requests, 1) * 1e6,
    )


def compare(
    ours: Server, bare: Server, script: Path, clients: int, seconds: int, rounds: int
) -> tuple[Load, Load]:
    """Both servers, interleaved round by round, each run after a 1 s warm-up."""
    mine: list[Load] = []
    theirs: list[Load] = []
    for _ in range(rounds):
        for server, loads in ((ours, mine), (bare, theirs)):
            wrk(server, script, clients, 1)
            loads.append(wrk(server, script, clients, seconds))
    return best(mine), best(theirs)


# --- the run ------------------------------------------------------------------------


def cell(load: Load) -> str:
    return f"{load.rps:,.0f} req/s, p99 {load.p99_ms:.1f} ms, {load.cpu_us:.0f} µs CPU/req"


def ratio_row(measure_: str, loads: tuple[Load, Load], target: float) -> None:
    ours, base = loads
    r = ours.rps / base.rps
    row(
        measure_,
        cell(ours),
        cell(base),
        f"{r:.2f}× ({base.cpu_us / ours.cpu_us:.2f}× by CPU/req)",
        f"≥ {target}×",
        "yes" if r >= target else "NO",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=3, help="per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per row; best")
    parser.add_argument("--dir", help="data dir for the ledger (default: a temp dir)")
    parser.add_argument("--bare", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        directory = Path(args.bare[1])
        bare_server(int(args.bare[0]), directory / "get.json", directory / "patch.json")
        return
    if shutil.which("wrk") is None:
        raise SystemExit("bench_api needs wrk as its load generator: apt-get install wrk")
    directory = Path(args.dir or tempfile.mkdtemp(prefix="kua-bench-api-"))
    directory.mkdir(parents=True, exist_ok=True)
    where = machine()
    print(f"machine: {where}", file=sys.stderr)

    ours = start_ours(directory)
    bare = None
    try:
        got, patched = register_apps(ours)
        bare = start_bare(directory, got, patched)
        get, patch = lua_script(directory, "GET"), lua_script(directory, "PATCH")
        s, n = args.seconds, args.rounds
        ratio_row("GET /api/v1/apps/{app}, 64 clients", compare(ours, bare, get, 64, s, n), 0.7)
        ratio_row(
            "durable PATCH /api/v1/apps/{app}, 64 clients",
            compare(ours, bare, patch, 64, s, n),
            0.4,
        )
        ours16, bare16 = compare(ours, bare, patch, 16, s, n)
        met = "yes" if ours16.p99_ms < 20 else "NO"
        row("durable PATCH p99, 16 clients", cell(ours16), cell(bare16), "–", "p99 < 20 ms", met)
    finally:
        if bare is not None:
            bare.stop()
        ours.stop()
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)

    intro = (
        f"Machine: {where}. Load generator: wrk, 1 thread, keep-alive; servers: one process "
        f"each; best of {args.rounds} interleaved {args.seconds} s runs per cell."
    )
    header = ("measure", "kuadeploy", "ceiling: bare aiohttp", "throughput ratio", "target", "met")
    print_table(intro, header, ROWS)


if __name__ == "__main__":
    main()
