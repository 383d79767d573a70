"""Run by test_ledger_crash: append forever from several tasks, print each durable seq.

A line `seq hash` is printed only after the append that wrote it returned, so
everything printed must survive a SIGKILL at any moment.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from kuadeploy import events as ev
from kuadeploy.audit.startup import open_checked
from kuadeploy.config import Config
from kuadeploy.ledger import ConflictError, Ledger, NewEvent, reading
from kuadeploy.projector import Projector, load_state
from tests.support import entry


def deploy_events(app: str, deploy: str, rng: random.Random) -> list[NewEvent]:
    stream = f"deploy/{deploy}"
    out = [
        NewEvent(stream, ev.DeployRequested(app=app, trigger="api")),
        NewEvent(stream, ev.DeployStarted(app=app, sha=f"{rng.getrandbits(40):010x}")),
        NewEvent(stream, ev.StepStarted(app=app, step="build")),
    ]
    if rng.random() < 0.5:
        sha = f"{rng.getrandbits(40):010x}"
        out.append(NewEvent(stream, ev.StepSucceeded(app=app, step="build", detail={"n": 1})))
        out.append(NewEvent(stream, ev.DeploySucceeded(app=app, sha=sha, image_id=f"sha256:{sha}")))
    else:
        out.append(NewEvent(stream, ev.DeployFailed(app=app, reason="boom", step="build")))
    return out


async def worker(led: Ledger, k: int, seed: int) -> None:
    rng = random.Random(seed * 1000 + k)
    i = 0
    while True:
        i += 1
        app = f"app{rng.randrange(6)}"
        if rng.random() < 0.6:
            version = await led.stream_version(f"app/{app}")
            data = ev.AppRegistered(app=app, entry=entry(f"b{k}-{i}"))
            items = [NewEvent(f"app/{app}", data, version)]
        else:
            items = deploy_events(app, f"{seed}-{k}-{i}", rng)
        try:
            stored = await led.append(items, actor=f"w{k}")
        except ConflictError:
            continue
        sys.stdout.write("".join(f"{s.seq} {s.hash.hex()}\n" for s in stored))
        sys.stdout.flush()


async def main(path: str, seed: int) -> None:
    # The service's start-up: the ledger checked against the mirrored checkpoint,
    # then checkpoints signed every 50 ms while the workers append.
    config = Config(data_dir=str(Path(path).parent), checkpoint_interval_s=0.05)
    led = (await open_checked(config)).ledger
    state = load_state(reading.open_readonly(path))  # start-up: snapshot + tail
    projector = Projector(state, snapshot_every=7)
    projector.attach(led)
    await asyncio.gather(*(worker(led, k, seed) for k in range(6)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
