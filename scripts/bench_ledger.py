#!/usr/bin/env python3
"""Ledger benchmarks: each measure next to a baseline run on the same disk, in this run.

    python scripts/bench_ledger.py [--events 1000000] [--dir /path/on/the/disk]

Prints a Markdown table (measure, kuadeploy, baseline, ratio, target).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kuadeploy import events as ev
from kuadeploy.audit import checkpoints
from kuadeploy.audit.keys import load_signer
from kuadeploy.audit.startup import check_ledger, open_checked
from kuadeploy.config import Config
from kuadeploy.entry import AppEntry, Container, Verify
from kuadeploy.export import export_at
from kuadeploy.ledger import GENESIS, Ledger, NewEvent, reading, schema, store
from kuadeploy.ledger.verify import verify_ledger
from kuadeploy.projector import Projector, State, load_state, rebuild_state
from projections.deploys import fold_deploy

ROWS: list[tuple[str, str, str, str, str]] = []


def row(measure: str, ours: str, base: str, ratio: str, target: str) -> None:
    ROWS.append((measure, ours, base, ratio, target))
    print(f"  {measure}: {ours} vs {base} -> {ratio} (target {target})", file=sys.stderr)


def fresh(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def sample_event(i: int) -> NewEvent:
    app = f"app{i % 40}"
    if i % 10 == 0:
        entry = AppEntry(
            server="local",
            repo=f"https://forge.example.org/infra/{app}.git",
            branch="main",
            container=Container(name=app, env={"MODE": "prod", "N": str(i)}),
            verify=Verify(health_url="http://127.0.0.1:8081/healthz"),
        )
        return NewEvent(f"app/{app}", ev.AppRegistered(app=app, entry=entry))
    deploy = f"deploy/{i // 10}"
    step = ("fetch", "build", "recreate", "verify")[i % 4]
    if i % 10 == 1:
        return NewEvent(deploy, ev.DeployRequested(app=app, trigger="api", sha=f"{i:040x}"))
    if i % 10 == 9:
        return NewEvent(
            deploy, ev.DeploySucceeded(app=app, sha=f"{i:040x}", image_id=f"sha256:{i:064x}")
        )
    if i % 2:
        return NewEvent(deploy, ev.StepStarted(app=app, step=step))
    return NewEvent(deploy, ev.StepSucceeded(app=app, step=step, detail={"ms": i % 977}))


# --- durable append ----------------------------------------------------------------------


def raw_append_rate(path: Path, n: int, same_schema: bool) -> float:
    """A plain sqlite3 loop: sha256, INSERT, commit per event (WAL, FULL). With
    `same_schema`, into our events table (its columns, UNIQUE(stream, version) and ts
    index); otherwise into a bare (seq, body, hash) table."""
    fresh(path)
    conn = sqlite3.connect(path, isolation_level=None)
    if same_schema:
        schema.prepare(conn, str(path))  # WAL, FULL, our tables, indexes and triggers
    else:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, body BLOB, hash BLOB)")
    body = ev.encode(
        ev.envelope(sample_event(3).data, seq=1, ts="x", stream="deploy/1", version=1, actor="a")
    )
    ts = "2026-01-01T00:00:00.000000Z"
    prev = bytes(32)
    started = time.perf_counter()
    for seq in range(1, n + 1):
        prev = hashlib.sha256(prev + body).digest()
        if same_schema:
            conn.execute(
                "INSERT INTO events (seq, stream, version, type, ts, body, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, "deploy/1", seq, "StepStarted", ts, body, prev),
            )
        else:
            conn.execute("INSERT INTO events VALUES (?, ?, ?)", (seq, body, prev))
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


async def ledger_append_rate(path: Path, writers: int, per_writer: int) -> float:
    fresh(path)
    led = await Ledger.open(str(path))
    item = sample_event(3)

    async def writer(k: int) -> None:
        for _ in range(per_writer):
            await led.append([NewEvent(f"deploy/{k}", item.data)], actor="bench")

    started = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(writers)))
    elapsed = time.perf_counter() - started
    await led.close()
    return writers * per_writer / elapsed


async def audit_append_rate(
    directory: Path, writers: int, per_writer: int, on: bool
) -> tuple[float, float]:
    """Durable appends with checkpoints on (what the service runs: the Merkle tree
    advanced after every commit, its nodes flushed, a checkpoint signed, stored and
    mirrored every second) or off (the tree's advance made a no-op, nothing signed).
    Returns (events/s, CPU µs per event): the disk here is shared and noisy, the CPU
    this process spends per event much less so."""
    data = directory / "audit"
    shutil.rmtree(data, ignore_errors=True)
    real_advance = store.advance
    if on:
        led = (await open_checked(Config(data_dir=str(data)))).ledger
    else:
        store.advance = lambda state, bodies, pending=None: state
        data.mkdir(parents=True)
        led = await Ledger.open(str(data / "ledger.db"))
    item = sample_event(3)

    async def writer(k: int) -> None:
        for _ in range(per_writer):
            await led.append([NewEvent(f"deploy/{k}", item.data)], actor="bench")

    try:
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(writer(k) for k in range(writers)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        store.advance = real_advance
    await led.close()
    if on:
        conn = sqlite3.connect(data / "ledger.db")
        signed = conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
        conn.close()
        assert signed >= 1 + int(elapsed), f"{signed} checkpoints in {elapsed:.1f} s"
    n = writers * per_writer
    return n / elapsed, cpu / n * 1e6


async def inclusion_proof_times(path: Path, n: int, samples: int = 300) -> list[float]:
    led = await Ledger.open(str(path))
    assert led.tree.size == n
    rng = random.Random(11)
    times = []
    for _ in range(samples):
        seq = rng.randint(1, n)
        started = time.perf_counter()
        body = await checkpoints.inclusion(led, seq, n)
        times.append(time.perf_counter() - started)
        assert body["tree_size"] == n
    await led.close()
    return times


# --- bulk ---------------------------------------------------------------------------------


async def fill(path: Path, n: int, snapshot_every: int) -> None:
    fresh(path)
    led = await Ledger.open(str(path))
    Projector(State(), snapshot_every=snapshot_every).attach(led)
    batch = 2000
    for start in range(0, n, batch):
        items = [sample_event(i) for i in range(start, min(n, start + batch))]
        await led.append(items, actor="bench")
        if start % 100_000 == 0:
            print(f"  filled {start:,}/{n:,}", file=sys.stderr)
    await led.close()


def bare_verify_rate(path: Path) -> float:
    conn = sqlite3.connect(path)
    prev = bytes(32)
    started = time.perf_counter()
    n = 0
    for _seq, body, stored in conn.execute("SELECT seq, body, hash FROM events ORDER BY seq"):
        prev = hashlib.sha256(prev + body).digest()
        if prev != stored:
            raise SystemExit("baseline chain broken")
        n += 1
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


def timed(fn, *args):
    gc.collect()
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- eventsourcing ------------------------------------------------------------------------


def eventsourcing_rates(directory: Path, n: int) -> tuple[float, float, float] | None:
    """eventsourcing's SQLite recorder, one aggregate event per save: (durable appends
    a second, events read a second, events replayed into the aggregate a second)."""
    try:
        from eventsourcing.application import Application
        from eventsourcing.domain import Aggregate, event
    except ImportError:
        return None

    class Dog(Aggregate):
        @event("Registered")
        def __init__(self, name: str) -> None:
            self.name = name
            self.tricks: list[str] = []

        @event("TrickAdded")
        def add_trick(self, trick: str) -> None:
            self.tricks.append(trick)

    db = directory / "es.db"
    fresh(db)
    os.environ.update(PERSISTENCE_MODULE="eventsourcing.sqlite", SQLITE_DBNAME=str(db))
    app = Application()
    dog = Dog("fido")
    app.save(dog)
    started = time.perf_counter()
    for i in range(n):
        dog.add_trick(f"trick{i}")
        app.save(dog)
    append_rate = n / (time.perf_counter() - started)
    read_rate = replay_rate = 0.0
    for _ in range(5):  # best of five
        started = time.perf_counter()
        read = sum(1 for _ in app.events.get(dog.id))
        read_rate = max(read_rate, read / (time.perf_counter() - started))
        started = time.perf_counter()
        replayed = app.repository.get(dog.id)
        assert len(replayed.tricks) == n
        replay_rate = max(replay_rate, (n + 1) / (time.perf_counter() - started))
    return append_rate, read_rate, replay_rate


async def ledger_append_and_replay(path: Path, n: int) -> tuple[float, float, float, float]:
    """The same work on our ledger: one stream, one event per durable append (a deploy
    whose steps accumulate, as the dog's tricks do); then read and decode every event,
    replay them into the projections, and fold the one stream into its view (what
    `repository.get` does for one aggregate; the API does it for a finished deploy)."""
    fresh(path)
    led = await Ledger.open(str(path))
    stream = "deploy/es"
    await led.append([NewEvent(stream, ev.DeployRequested(app="es", trigger="api"))], actor="b")
    steps = [ev.StepStarted(app="es", step="build"), ev.StepSucceeded(app="es", step="build")]
    started = time.perf_counter()
    for i in range(n):
        await led.append([NewEvent(stream, steps[i % 2])], actor="bench")
    append_rate = n / (time.perf_counter() - started)
    await led.close()
    conn = reading.open_readonly(str(path))
    decode = ev.decoder().decode
    read_rate = replay_rate = stream_rate = 0.0
    for _ in range(5):  # best of five
        started = time.perf_counter()
        read = sum(1 for body in reading.iter_bodies(conn, 0, n + 1) if decode(body))
        read_rate = max(read_rate, read / (time.perf_counter() - started))
        started = time.perf_counter()
        state = rebuild_state(conn)
        assert len(state.deploys.views["es"].steps) == n // 2 + n % 2
        replay_rate = max(replay_rate, state.seq / (time.perf_counter() - started))
        started = time.perf_counter()
        view = None
        for body in reading.iter_stream_bodies(conn, stream):
            view = fold_deploy(view, decode(body))
        assert view is not None and len(view.events) == n + 1
        stream_rate = max(stream_rate, (n + 1) / (time.perf_counter() - started))
    conn.close()
    return append_rate, read_rate, replay_rate, stream_rate


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--appends", type=int, default=3000, help="single-writer appends")
    parser.add_argument("--dir", help="where to put the databases (default: a temp dir)")
    args = parser.parse_args()
    directory = Path(args.dir or tempfile.mkdtemp(prefix="kua-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    small = directory / "append.db"

    print("durable append …", file=sys.stderr)
    raws, bares, ours = [], [], []
    for _ in range(3):  # interleaved, best of three: the disk is shared and noisy
        raws.append(raw_append_rate(small, args.appends, same_schema=True))
        ours.append(asyncio.run(ledger_append_rate(small, 1, args.appends)))
        bares.append(raw_append_rate(small, args.appends, same_schema=False))
    raw, bare_table, one = max(raws), max(bares), max(ours)
    row("durable append, 1 writer (events/s)", f"{one:,.0f}",
        f"{raw:,.0f} raw sqlite3, same table", f"{one / raw:.2f}×", "≥ 0.8×")  # fmt: skip
    row("durable append, 1 writer, vs a bare 3-column table", f"{one:,.0f}",
        f"{bare_table:,.0f} raw sqlite3", f"{one / bare_table:.2f}×", "–")  # fmt: skip
    many = max(asyncio.run(ledger_append_rate(small, 64, args.appends // 16)) for _ in range(2))
    row("durable append, 64 writers (events/s)", f"{many:,.0f}", f"{one:,.0f} 1 writer",
        f"{many / one:.1f}×", "≥ 10×")  # fmt: skip

    print("checkpoints on / off …", file=sys.stderr)
    per_writer = max(100, args.appends // 3)
    offs, ons = [], []
    for _ in range(5):  # interleaved, best of five
        offs.append(asyncio.run(audit_append_rate(directory, 64, per_writer, on=False)))
        ons.append(asyncio.run(audit_append_rate(directory, 64, per_writer, on=True)))
    off, on = max(r for r, _ in offs), max(r for r, _ in ons)
    row("64 writers, checkpoints on vs off (events/s)", f"{on:,.0f}", f"{off:,.0f} off",
        f"{on / off:.2f}×", "≥ 0.9×")  # fmt: skip
    off, on = min(c for _, c in offs), min(c for _, c in ons)
    row("64 writers, checkpoints on vs off (CPU µs per event)", f"{on:.1f}", f"{off:.1f} off",
        f"{off / on:.2f}×", "≥ 0.9×")  # fmt: skip

    big = directory / "ledger.db"
    n = args.events
    print(f"filling {n:,} events …", file=sys.stderr)
    asyncio.run(fill(big, n, snapshot_every=4096))
    rss0 = peak_rss_mb()
    conn = reading.open_readonly(str(big))
    bares, t_verify, t_rebuild = [], float("inf"), float("inf")
    for _ in range(2):  # interleaved, best of two: the machine is shared
        bares.append(bare_verify_rate(big))
        result, t = timed(verify_ledger, conn)
        assert result.ok and result.events == n, result
        t_verify = min(t_verify, t)
    rss_verify = peak_rss_mb()
    result, t_verify_one = timed(verify_ledger, conn, GENESIS, 1)
    assert result.ok and result.events == n, result
    for _ in range(2):
        state, t = timed(rebuild_state, conn)
        assert state.seq == n
        t_rebuild = min(t_rebuild, t)
    rss_rebuild = peak_rss_mb()
    conn.close()
    bare = max(bares)
    row(f"full verify of {n:,} events, a process per core (events/s)", f"{n / t_verify:,.0f}",
        f"{bare:,.0f} bare loop", f"{n / t_verify / bare:.2f}×", "≥ 250k/s, ≥ 0.8×")  # fmt: skip
    row(f"full verify of {n:,} events, one process (events/s)", f"{n / t_verify_one:,.0f}",
        f"{bare:,.0f} bare loop", f"{n / t_verify_one / bare:.2f}×", "–")  # fmt: skip
    row(f"full rebuild of {n:,} events (events/s)", f"{n / t_rebuild:,.0f}",
        f"{bare:,.0f} bare loop", f"{n / t_rebuild / bare:.2f}×", "≥ 250k/s, ≥ 0.8×")  # fmt: skip
    row("peak RSS growth during verify / rebuild (MB)",
        f"{rss_verify - rss0:.0f} / {rss_rebuild - rss_verify:.0f}", "–", "–", "flat")  # fmt: skip

    def startup() -> State:
        async def go() -> State:
            led = await Ledger.open(str(big))
            c = reading.open_readonly(str(big))
            st = load_state(c)
            c.close()
            Projector(st).attach(led)
            await led.close()
            return st

        return asyncio.run(go())

    st, t_start = timed(startup)
    assert st.seq == n
    row(f"start-up at {n:,} events (open + snapshot + tail)", f"{t_start * 1000:.0f} ms",
        "–", "–", "< 1 s")  # fmt: skip

    times = asyncio.run(inclusion_proof_times(big, n))
    p50 = statistics.median(times) * 1000
    row(f"inclusion proof at {n:,} events (via the proof thread)", f"p50 {p50:.2f} ms", "–", "–",
        "p50 < 5 ms")  # fmt: skip

    signer = load_signer(Config(data_dir=str(directory)))
    _, t_check = timed(check_ledger, str(big), directory / "no-mirror", signer.verifier, "bench")
    row(f"start-up check at {n:,} events (chain + tree from the bodies)",
        f"{t_check * 1000:.0f} ms", "–", "–", "–")  # fmt: skip

    conn = reading.open_readonly(str(big))
    rng = random.Random(7)
    times = []
    for _ in range(200):
        seq = rng.randint(1, n)
        _, t = timed(export_at, conn, seq)
        times.append(t)
    conn.close()
    p50 = statistics.median(times) * 1000
    row(f"point-in-time export at random seqs of {n:,}", f"p50 {p50:.1f} ms", "–", "–",
        "p50 < 50 ms")  # fmt: skip

    es_n = max(500, args.appends // 2)
    es = eventsourcing_rates(directory, es_n)
    if es is None:
        row("eventsourcing comparison", "not installed", "pip install -e '.[bench]'", "–", "–")
    else:
        ours_append, ours_read, ours_replay, ours_stream = asyncio.run(
            ledger_append_and_replay(small, es_n)
        )
        row("append vs eventsourcing (1 writer, events/s)", f"{ours_append:,.0f}",
            f"{es[0]:,.0f}", f"{ours_append / es[0]:.2f}×", "≥ 2×")  # fmt: skip
        row("append, 64 writers vs eventsourcing (events/s)", f"{many:,.0f}",
            f"{es[0]:,.0f}", f"{many / es[0]:.1f}×", "≥ 2×")  # fmt: skip
        row("read + typed decode vs eventsourcing events.get (events/s)", f"{ours_read:,.0f}",
            f"{es[1]:,.0f}", f"{ours_read / es[1]:.1f}×", "–")  # fmt: skip
        row("replay into state vs eventsourcing repository.get (events/s)",
            f"{ours_replay:,.0f}", f"{es[2]:,.0f}", f"{ours_replay / es[2]:.1f}×",
            "≥ 20×")  # fmt: skip
        row("replay one stream into its view vs eventsourcing repository.get (events/s)",
            f"{ours_stream:,.0f}", f"{es[2]:,.0f}", f"{ours_stream / es[2]:.1f}×",
            "≥ 20×")  # fmt: skip

    print(f"\nMachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"SQLite {sqlite3.sqlite_version}, {directory}\n")  # fmt: skip
    print("| measure | kuadeploy | baseline | ratio | target |")
    print("|---|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    if not args.dir:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
