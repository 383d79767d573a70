#!/usr/bin/env python3
"""End-to-end deploy time: kuadeploy against the same work done by hand with git/docker.

    python scripts/bench_deploy.py [--rounds 5] [--docker unix:///path/docker.sock]

Without --docker a private engine is started with scripts/engine (and stopped).
Both sides deploy the test app (FROM scratch + busybox) on the same engine, back to
back, a fresh commit each round, with verify.stable_s = 0: fetch, export, build,
remove the old container, run the new one, inspect it, wait for /healthz to show the
SHA. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kuadeploy.config import DeployConfig, ServerConfig, WebhookConfig
from tests.api_support import (
    make_config,
    running,
)
from tests.deploy_support import deploy, register, wait_status
from tests.fixtures.testapp import SampleApp, free_port
from tests.forge import ForgeRepo, deliver

SECRET = "bench-secret"


def by_hand(app: SampleApp, docker: str, clone: Path, sha: str) -> float:
    """The hand-written sequence a careful operator would type."""
    env = {**os.environ, "DOCKER_HOST": docker, "DOCKER_BUILDKIT": "0"}
    started = time.perf_counter()

    marks: list[tuple[str, float]] = []

    def run(*cmd: str) -> str:
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        marks.append((" ".join(cmd[:2]), time.perf_counter() - started))
        return out

    if (clone / "HEAD").exists():
        run("git", "--git-dir", str(clone), "fetch", "-q", "origin", "+refs/heads/*:refs/heads/*")
    else:
        run("git", "clone", "-q", "--mirror", app.repo, str(clone))
    src = clone.parent / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    archive = subprocess.run(
        ["git", "--git-dir", str(clone), "archive", sha], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    tag = f"hand-{app.name}:{sha}"
    run("docker", "build", "-q", "--build-arg", f"GIT_SHA={sha}", "--label", f"kua.sha={sha}",
        "-t", tag, str(src))  # fmt: skip
    run("docker", "rm", "-f", app.name)
    run("docker", "run", "-d", "--name", app.name, "--network", "host", "--label",
        f"kua.sha={sha}", "-e", f"KUA_GIT_SHA={sha}", tag)  # fmt: skip
    run("docker", "inspect", app.name)
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(app.health_url, timeout=2) as resp:
                if sha in resp.read().decode():
                    break
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit("hand-run container never became healthy")
        time.sleep(0.02)
    if os.environ.get("KUA_BENCH_STEPS"):
        print("by hand:", ", ".join(f"{name} {t:.3f}" for name, t in marks), file=sys.stderr)
    return time.perf_counter() - started


async def with_kuadeploy(
    rounds: int, docker: str, work: Path
) -> tuple[list[float], list[float], list[float]]:
    ours, hand, hooked = [], [], []
    (work / "app").mkdir()
    app = SampleApp("bench-app", free_port(set()), work / "app")
    servers = {"a": ServerConfig(docker=docker)}
    config = make_config(
        work / "data",
        servers=servers,
        deploy=DeployConfig(health_poll_s=0.02),
        webhook=WebhookConfig(secret=SECRET),
    )
    forge = ForgeRepo(f"bench/{app.name}", base="http://127.0.0.1:9", ssh="git@127.0.0.1")
    async with running(config) as api:
        await register(api, app, forge_repo=forge.full_name,
                       verify={"health_url": app.health_url, "expect_sha_in_body": True,
                               "stable_s": 0})  # fmt: skip
        view = await wait_status(api, await deploy(api, app.name))  # warm the build cache
        assert view["status"] == "succeeded", view
        by_hand(app, docker, work / "hand" / "mirror.git", app.head)
        for i in range(rounds):
            sha = app.healthy(note=f"round {i}")
            started = time.perf_counter()
            view = await wait_status(api, await deploy(api, app.name, sha=sha), poll_s=0.005)
            ours.append(time.perf_counter() - started)
            assert view["status"] == "succeeded", view
            if os.environ.get("KUA_BENCH_STEPS"):
                print(step_times(view), file=sys.stderr)
            sha = app.healthy(note=f"round {i} by hand")
            hand.append(by_hand(app, docker, work / "hand" / "mirror.git", sha))
            before, sha = app.head, app.healthy(note=f"round {i} pushed")
            hooked.append(await push_to_verified(api, forge, before, sha))
    subprocess.run(["docker", "--host", docker, "rm", "-f", app.name], capture_output=True)
    return ours, hand, hooked


async def push_to_verified(api, forge: ForgeRepo, before: str, sha: str) -> float:
    """From a Forgejo push delivery (signed, as Forgejo builds it) to the verified SHA."""
    d = deliver("push", forge.push(sha, before=before), SECRET)
    started = time.perf_counter()
    async with api.session.post(api.url("/webhook/forgejo"), data=d.body, headers=d.headers) as r:
        answer = await r.json()
        assert r.status == 202, answer
    view = await wait_status(api, answer["deploy_ids"][0], poll_s=0.005)
    assert view["status"] == "succeeded" and view["sha"] == sha, view
    return time.perf_counter() - started


def step_times(view: dict) -> str:
    from datetime import datetime

    def t(s: str) -> datetime:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))

    parts = [f"{s['name']} {(t(s['finished']) - t(s['started'])).total_seconds():.3f}"
             for s in view["steps"]]  # fmt: skip
    total = (t(view["finished"]) - t(view["requested"])).total_seconds()
    return f"total {total:.3f}: " + ", ".join(parts)


@contextlib.contextmanager
def engine(url: str | None):
    if url:
        yield url
        return
    directory = Path(tempfile.mkdtemp(prefix="kua-b", dir="/tmp"))
    subprocess.run([str(ROOT / "scripts" / "engine"), "start", str(directory)], check=True)
    try:
        yield f"unix://{directory}/docker.sock"
    finally:
        subprocess.run([str(ROOT / "scripts" / "engine"), "stop", str(directory)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--docker", help="engine URL (default: start a private one)")
    args = parser.parse_args()
    with engine(args.docker) as url, tempfile.TemporaryDirectory() as tmp:
        ours, hand, hooked = asyncio.run(with_kuadeploy(args.rounds, url, Path(tmp)))
    o, h, w = statistics.median(ours), statistics.median(hand), statistics.median(hooked)
    print(f"\nMachine: {os.cpu_count()} cores; {args.rounds} rounds each, medians\n")
    print("| measure | kuadeploy | by hand (git + docker CLI) | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| deploy end to end, stable_s = 0 | {o:.2f} s | {h:.2f} s | {o / h:.2f}× | ≤ 1.15× |")
    print(f"| webhook push to verified, stable_s = 0 | {w:.2f} s | – | – | recorded |")


if __name__ == "__main__":
    main()
