"""Bounded chaos run: random concurrent API traffic + SIGKILL/restart, then invariants.

Usage: PYTHONPATH=. python scripts/chaos.py SEED DOCKER_URL [ROUNDS]
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.fixtures import engines
from tests.fixtures.testapp import SampleApp, remove_app_from_engines
from tests.support import ROOT
from tests.test_deploy_crash import Server

TERMINAL = {
    "DeploySucceeded",
    "DeployFailed",
    "RolledBack",
    "DeployCancelled",
    "DeploySuperseded",
    "DeployInterrupted",
}
ACTIVE = ("queued", "running", "awaiting_approval")
REG = {"AppRegistered", "AppReplaced", "AppPatched"}


class LoggedServer(Server):
    def start(self) -> None:
        import os

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = open(self.tmp / "serve.log", "ab")  # noqa: SIM115 - the server's, while it runs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kuadeploy", "serve", "--config", str(self.config)],
            env=env,
            stdout=log,
            stderr=log,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                self.call("GET", "/healthz")
                return
            except Exception:
                time.sleep(0.1)
        raise AssertionError("server did not come up")

    def safe(self, method, path, body=None):
        try:
            return self.call(method, path, body)
        except Exception as exc:  # server killed mid-request, timeouts
            return None, repr(exc)


def events(server: LoggedServer) -> list[dict]:
    out, after = [], 0
    while True:
        _, page = server.call("GET", f"/api/v1/events?after={after}&limit=1000")
        out += page["events"]
        if not page["events"]:
            return out
        after = page["events"][-1]["seq"]


def fold_registry(evs: list[dict]) -> tuple[dict, dict]:
    apps, versions = {}, {}
    for ev in evs:
        if ev["type"] in REG:
            apps[ev["data"]["app"]] = ev["data"]["entry"]
            versions[ev["data"]["app"]] = ev["version"]
        elif ev["type"] == "AppRemoved":
            apps.pop(ev["data"]["app"], None)
            versions.pop(ev["data"]["app"], None)
    return apps, versions


def cli(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "kuadeploy", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    return done.returncode, (done.stdout + done.stderr)[-2000:]


class Chaos:
    def __init__(self, seed: int, docker: str, rounds: int) -> None:
        self.seed, self.rng, self.rounds = seed, random.Random(seed), rounds
        self.tmp = Path(f"/tmp/audit-chaos/run-{seed}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.server = LoggedServer(self.tmp, docker)
        # short health timeouts keep rounds short
        self.apps = []
        for i in range(3):
            root = self.tmp / f"c{seed}-app{i}"
            root.mkdir()
            port = 20000 + seed % 1000 * 10 + i
            self.apps.append(SampleApp(f"c{seed}-app{i}", port, root))
        self.git_locks = {a.name: threading.Lock() for a in self.apps}
        self.deploy_ids: set[str] = set()
        self.violations: list[str] = []
        self.log = open(self.tmp / "ops.log", "a")  # noqa: SIM115 - open for the whole run
        self.lock = threading.Lock()

    def note(self, text: str) -> None:
        with self.lock:
            self.log.write(f"{time.time():.3f} {text}\n")
            self.log.flush()

    def entry(self, app: SampleApp, rng: random.Random) -> dict:
        e = app.entry("a")
        e["verify"]["timeout_s"] = 4
        e["verify"]["stable_s"] = rng.choice([0, 1])
        e["migrations"]["approval"] = rng.choice(["required", "auto"])
        e["keep_releases"] = rng.choice([2, 3, 5])
        return e

    def op(self, rng: random.Random) -> None:
        app = rng.choice(self.apps)
        path = f"/api/v1/apps/{app.name}"
        kind = rng.choices(
            ["put", "patch", "delete", "push", "deploy", "cancel", "rollback", "approve"],
            [3, 2, 1, 4, 6, 2, 2, 2],
        )[0]
        s = self.server
        if kind == "put":
            r = s.safe("PUT", path, self.entry(app, rng))
        elif kind == "patch":
            patch = rng.choice(
                [
                    {"keep_releases": rng.choice([2, 3, 4])},
                    {"verify": {"stable_s": rng.choice([0, 1])}},
                    {"migrations": {"approval": rng.choice(["required", "auto"])}},
                    {"container": {"env": {"X": str(rng.random())}}},
                ]
            )
            r = s.safe("PATCH", path, patch)
        elif kind == "delete":
            r = s.safe("DELETE", path)
        elif kind == "push":
            variant = rng.choice(
                ["healthy", "healthy", "broken", "slow", "h500", "migr", "exits", "migrfail"]
            )
            with self.git_locks[app.name]:
                sha = {
                    "healthy": lambda: app.healthy(note=str(rng.random())),
                    "broken": app.broken_dockerfile,
                    "slow": lambda: app.slow_build(rng.choice([2, 4])),
                    "h500": lambda: app.health_status(500),
                    "migr": lambda: app.add_migration(0),
                    "migrfail": lambda: app.add_migration(1),
                    "exits": lambda: app.exits_after(1),
                }[variant]()
            r = ("git", variant, sha)
        elif kind == "deploy":
            r = s.safe("POST", f"{path}/deploy", rng.choice([{}, {}, {"force": True}]))
            if r[0] in (200, 202):
                self.deploy_ids.add(r[1]["deploy_id"])
        elif kind == "rollback":
            r = s.safe("POST", f"{path}/rollback", {})
            if r[0] in (200, 202):
                self.deploy_ids.add(r[1]["deploy_id"])
        else:
            if not self.deploy_ids:
                return
            with self.lock:
                dep = rng.choice(sorted(self.deploy_ids))
            r = s.safe("POST", f"/api/v1/deploys/{dep}/{kind}")
        if isinstance(r[0], int) and r[0] >= 500:
            self.violations.append(f"5xx on {kind} {app.name}: {r}")
        self.note(f"{kind} {app.name} -> {str(r)[:300]}")

    def traffic(self, seconds: float, nthreads: int = 3) -> None:
        stop = time.time() + seconds
        seeds = [self.rng.randrange(1 << 30) for _ in range(nthreads)]

        def worker(sd: int) -> None:
            rng = random.Random(sd)
            while time.time() < stop:
                self.op(rng)
                time.sleep(rng.uniform(0, 0.3))

        threads = [threading.Thread(target=worker, args=(sd,)) for sd in seeds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def drain(self, timeout: float = 180) -> None:
        """Approve held gates and wait until no deploy is active."""
        deadline = time.time() + timeout
        while True:
            evs = events(self.server)
            ids = {
                ev["stream"].split("/", 1)[1] for ev in evs if ev["stream"].startswith("deploy/")
            }
            self.deploy_ids |= ids
            active = []
            for d in sorted(ids):
                _, v = self.server.call("GET", f"/api/v1/deploys/{d}")
                if v["status"] == "awaiting_approval":
                    self.server.safe("POST", f"/api/v1/deploys/{d}/approve")
                if v["status"] in ACTIVE:
                    active.append((d, v["status"], v["app"]))
            if not active:
                return
            if time.time() > deadline:
                self.violations.append(f"stuck after {timeout}s: {active}")
                return
            time.sleep(1)

    def check(self, label: str) -> None:
        data = str(self.tmp / "data")
        rc, out = cli("audit", "verify", "--full", "--data-dir", data)
        if rc != 0:
            self.violations.append(f"[{label}] audit verify --full rc={rc}: {out}")
        rc, out = cli("rebuild", "--data-dir", data)
        if rc != 0:
            self.violations.append(f"[{label}] rebuild rc={rc}: {out}")
        evs = events(self.server)
        by_stream: dict[str, list[dict]] = {}
        for ev in evs:
            by_stream.setdefault(ev["stream"], []).append(ev)
        for stream, sevs in by_stream.items():
            if not stream.startswith("deploy/"):
                continue
            types = [e["type"] for e in sevs]
            firsts = [i for i, t in enumerate(types) if t in TERMINAL]
            if firsts and firsts[0] != len(types) - 1:
                self.violations.append(
                    f"[{label}] {stream} events after terminal: {types[firsts[0] :]} "
                    f"seqs {[e['seq'] for e in sevs[firsts[0] :]]}"
                )
            if not firsts:
                self.violations.append(f"[{label}] {stream} no terminal event: {types}")
        apps, versions = fold_registry(evs)
        _, exp = self.server.call("GET", "/api/v1/registry/export")
        if exp["apps"] != apps or exp["versions"] != versions:
            self.violations.append(
                f"[{label}] export != fold: export={json.dumps(exp['versions'])} fold={versions}"
            )
        last: dict[str, tuple[str, dict]] = {}  # app -> (deploy id, its last terminal event)
        for stream, sevs in by_stream.items():
            if stream.startswith("deploy/"):
                ends = [e for e in sevs if e["type"] in TERMINAL]
                if ends:
                    app_name = ends[-1]["data"]["app"]
                    if app_name not in last or last[app_name][1]["seq"] < ends[-1]["seq"]:
                        last[app_name] = (stream[7:], ends[-1])
        for app in self.apps:
            st, prog = self.server.call("GET", f"/api/v1/apps/{app.name}/progress")
            if app.name in last and st == 200 and prog["id"] != last[app.name][0]:
                self.note(
                    f"[{label}] progress of {app.name} shows {prog['id']} ({prog['status']}) "
                    f"but the last deploy to end is {last[app.name][0]}"
                )
            if app.name not in last or last[app.name][1]["type"] != "DeploySucceeded":
                continue
            if app.name not in apps:
                continue
            deploy_id, end = last[app.name]
            _, rt = self.server.call("GET", f"/api/v1/apps/{app.name}/runtime-status")
            csha = (rt.get("container") or {}).get("sha")
            if rt.get("drift") is not False or csha != end["data"]["sha"]:
                self.violations.append(
                    f"[{label}] {app.name} last deploy {deploy_id} succeeded "
                    f"sha={end['data']['sha']} but runtime drift={rt.get('drift')} "
                    f"container sha={csha} rt={json.dumps(rt)[:600]}"
                )
        self.note(f"check {label}: {len(evs)} events, violations so far {len(self.violations)}")

    def run(self) -> list[str]:
        s = self.server
        s.start()
        for app in self.apps:
            s.register(app.name, self.entry(app, self.rng))
        try:
            for rnd in range(self.rounds):
                secs = self.rng.uniform(3, 12)
                self.note(f"round {rnd}: traffic {secs:.1f}s then SIGKILL")
                killer = threading.Timer(secs, s.kill)  # SIGKILL while requests are in flight
                killer.start()
                self.traffic(secs + self.rng.uniform(0.2, 1.5))
                killer.join()
                self.note(f"round {rnd}: killed")
                s.start()
                self.drain()
                self.check(f"round {rnd}")
            self.traffic(self.rng.uniform(3, 8))
            self.drain()
            self.check("final")
        finally:
            s.stop()
            for app in self.apps:
                remove_app_from_engines(app.name)
        return self.violations


if __name__ == "__main__":
    seed, docker = int(sys.argv[1]), sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    engines.engines_in_use.append(docker)
    v = Chaos(seed, docker, rounds).run()
    print(f"seed {seed}: {len(v)} violations")
    for line in v:
        print(" -", line)
