"""A conflict is raised only once the append that won is committed and its subscribers have
seen it, so a writer that decides again (against a projection) sees the winner at once."""

from __future__ import annotations

import asyncio

from kuadeploy.ledger import ConflictError, Ledger
from tests.support import register


async def test_loser_sees_the_winner_when_its_conflict_arrives(tmp_path) -> None:
    ledger = await Ledger.open(str(tmp_path / "ledger.db"))
    seen: list[int] = []  # what a projection would have applied
    ledger.subscribe(lambda batch: seen.extend(s.seq for s in batch))
    try:
        await ledger.append([register("web")], actor="a")

        async def append(branch: str) -> str:
            try:
                await ledger.append([register("web", branch, expected=1)], actor="a")
                return "won"
            except ConflictError:
                assert ledger.head.seq == 2 and seen == [1, 2]  # the winner is visible
                return "lost"

        outcomes = await asyncio.gather(*(append(f"b{i}") for i in range(10)))
        assert sorted(outcomes) == ["lost"] * 9 + ["won"]
    finally:
        await ledger.close()


async def test_retrying_writers_need_one_round_per_winner(tmp_path) -> None:
    """30 writers of one stream, each deciding from what the subscriber saw, retrying on
    conflict: each round commits one of them, none has to retry more than 30 times."""
    ledger = await Ledger.open(str(tmp_path / "ledger.db"))
    version = {"app/web": 0}
    ledger.subscribe(lambda batch: version.update((s.event.stream, s.event.version) for s in batch))
    tries: list[int] = []
    try:

        async def writer(i: int) -> None:
            for attempt in range(1, 100):
                expected = version["app/web"]
                try:
                    await ledger.append([register("web", f"b{i}", expected=expected)], actor="a")
                    tries.append(attempt)
                    return
                except ConflictError:
                    continue

        await asyncio.gather(*(writer(i) for i in range(30)))
        assert len(tries) == 30 and max(tries) <= 30
        assert version["app/web"] == 30
    finally:
        await ledger.close()
