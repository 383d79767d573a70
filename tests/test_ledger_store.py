"""The store: atomic appends, optimistic concurrency, group commit, durability, schema."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from kuadeploy import events as ev
from kuadeploy.ledger import ConflictError, Ledger, NewEvent, SchemaError, chain_hash, reading
from kuadeploy.ledger.chain import GENESIS_HASH
from kuadeploy.ledger.verify import verify_ledger
from tests.support import register, run_cli


@pytest.fixture
async def ledger(tmp_path):
    led = await Ledger.open(str(tmp_path / "ledger.db"))
    yield led
    await led.close()


async def test_append_assigns_seq_version_and_chain(ledger):
    first = await ledger.append([register("web"), register("api")], actor="kavi")
    second = await ledger.append([register("web", "dev")], actor="kavi")
    assert [s.seq for s in first + second] == [1, 2, 3]
    assert [s.event.version for s in first + second] == [1, 1, 2]
    assert first[0].hash == chain_hash(GENESIS_HASH, first[0].body)
    assert second[0].hash == chain_hash(first[1].hash, second[0].body)
    assert ledger.head == (3, second[0].hash)
    assert second[0].event.actor == "kavi" and second[0].event.ts.endswith("Z")


async def test_body_is_canonical_json(ledger):
    [stored] = await ledger.append([register("web")], actor="kavi")
    body = stored.body.decode()
    assert body.startswith('{"actor":"kavi","data":{"app":"web","entry":{"branch":"main"')
    assert " " not in body.replace("forge.example.org", "")
    assert '"seq":1,"stream":"app/web"' in body and body.endswith(
        '"type":"AppRegistered","version":1}'
    )


async def test_multi_event_append_is_atomic_on_conflict(ledger):
    await ledger.append([register("web")], actor="a")
    with pytest.raises(ConflictError) as info:
        await ledger.append([register("api", expected=0), register("web", expected=0)], actor="a")
    assert info.value.stream == "app/web" and info.value.actual == 1
    assert ledger.head.seq == 1
    assert await ledger.stream_version("app/api") == 0


async def test_two_appends_expecting_the_same_version_exactly_one_commits(ledger):
    await ledger.append([register("web")], actor="a")
    results = await asyncio.gather(
        *(ledger.append([register("web", f"b{i}", expected=1)], actor="a") for i in range(10)),
        return_exceptions=True,
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    conflicts = [r for r in results if isinstance(r, ConflictError)]
    assert len(ok) == 1 and len(conflicts) == 9
    assert await ledger.stream_version("app/web") == 2


async def test_fifty_concurrent_appenders_gapless_and_durable(tmp_path):
    path = str(tmp_path / "ledger.db")
    led = await Ledger.open(path)

    async def appender(k: int) -> list[tuple[int, bytes]]:
        out = []
        for i in range(20):
            items = [register(f"app{k}", f"b{i}")]
            if i % 5 == 0:  # some multi-stream appends too
                items.append(
                    NewEvent(f"deploy/{k}-{i}", ev.DeployRequested(app=f"app{k}", trigger="api"))
                )
            out += [(s.seq, s.body) for s in await led.append(items, actor=f"w{k}")]
        return out

    results = await asyncio.gather(*(appender(k) for k in range(50)))
    assert max(led.batch_sizes) > 1, "concurrent appends should share commits"
    await led.close()

    returned = dict(pair for r in results for pair in r)
    conn = reading.open_readonly(path)
    rows = list(reading.iter_rows(conn))
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == len(returned) == 50 * (20 + 4)
    assert all(returned[seq] == body for seq, *_, body, _h in rows)
    result = verify_ledger(conn)
    assert result.ok and result.events == len(rows)


async def test_group_commit_uses_fewer_commits_than_appends(ledger):
    await asyncio.gather(*(ledger.append([register(f"a{i}")], actor="a") for i in range(64)))
    assert ledger.head.seq == 64
    assert len(ledger.batch_sizes) < 16


async def test_writers_in_a_loop_keep_sharing_commits(ledger):
    """Writers that append again as soon as their last append returns must keep
    meeting in shared commits, round after round (not fall back to one each)."""

    async def writer(k: int) -> None:
        for i in range(10):
            await ledger.append([register(f"a{k}", f"b{i}")], actor="a")

    await asyncio.gather(*(writer(k) for k in range(32)))
    assert ledger.head.seq == 320
    assert len(ledger.batch_sizes) <= 40, ledger.batch_sizes


async def test_a_lone_append_commits_without_the_queue(ledger, monkeypatch):
    queued: list = []
    real = ledger._queue.put_nowait
    monkeypatch.setattr(ledger._queue, "put_nowait", lambda item: queued.append(item) or real(item))
    stored = await ledger.append([register("web")], actor="a")
    assert stored[0].seq == 1 and ledger.head.seq == 1
    assert queued == []  # committed in the caller's turn
    await asyncio.gather(*(ledger.append([register(f"x{i}")], actor="a") for i in range(8)))
    assert len(queued) >= 7  # with company, appends go through the writer and group


async def test_events_table_rejects_update_and_delete(ledger):
    await ledger.append([register("web")], actor="a")
    conn = sqlite3.connect(ledger.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET body = x'00' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events WHERE seq = 1")
    conn.close()


async def test_timestamps_never_go_backwards(tmp_path):
    times = iter(["2026-01-01T00:00:02.000000Z", "2026-01-01T00:00:01.000000Z"])
    led = await Ledger.open(str(tmp_path / "l.db"), clock=lambda: next(times))
    a = await led.append([register("a")], actor="x")
    b = await led.append([register("b")], actor="x")
    await led.close()
    assert b[0].event.ts == a[0].event.ts == "2026-01-01T00:00:02.000000Z"


async def test_reads_by_range_stream_and_streaming(ledger):
    for i in range(30):
        await ledger.append([register(f"a{i % 3}", f"b{i}")], actor="a")
    assert [s.seq for s in await ledger.read(after=10, limit=5)] == [11, 12, 13, 14, 15]
    web = await ledger.read_stream("app/a1")
    assert [s.event.version for s in web] == list(range(1, 11))
    seen = [s.seq async for s in ledger.iter_events(after=3, until=25, page=4)]
    assert seen == list(range(4, 26))
    assert (await ledger.event_at(7)).event.data.entry.branch == "b6"


async def test_a_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "ledger.db"
    led = await Ledger.open(str(path))
    await led.append([register("web")], actor="a")
    await led.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SchemaError, match="schema version 99 is newer"):
        await Ledger.open(str(path))
    proc = run_cli("audit", "verify", "--data-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "schema version 99 is newer" in proc.stderr


async def test_close_finishes_queued_appends(tmp_path):
    led = await Ledger.open(str(tmp_path / "l.db"))
    pending = [asyncio.ensure_future(led.append([register(f"a{i}")], actor="a")) for i in range(20)]
    await asyncio.sleep(0)
    await led.close()
    assert all(p.done() and not p.exception() for p in pending)
    led = await Ledger.open(str(tmp_path / "l.db"))
    assert led.head.seq == 20
    await led.close()


async def test_commits_are_durable_wal_with_a_full_sync(ledger):
    """A SIGKILL cannot tell synchronous=FULL from OFF (the OS keeps the pages); only a
    power cut could. So the settings themselves are checked, on the writer's connection."""
    assert ledger._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert ledger._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_the_file_itself_refuses_a_second_event_at_a_stream_version(ledger):
    """Any writer, not only this process's in-memory check: UNIQUE(stream, version)."""
    [stored] = await ledger.append([register("web")], actor="a")
    conn = sqlite3.connect(ledger.path)
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute(
            "INSERT INTO events (seq, stream, version, type, ts, body, hash) "
            "VALUES (2, 'app/web', 1, 'AppRegistered', 'x', x'00', x'00')"
        )
    conn.close()
    assert ledger.head.seq == stored.seq == 1
