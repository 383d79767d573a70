"""The commit notifier: wakes waiters, and never loses a cancel that lands as it wakes."""

from __future__ import annotations

import asyncio

import pytest

from kuadeploy.notify import Notifier


async def test_wait_returns_true_when_notified_and_false_on_timeout():
    n = Notifier()
    assert await n.wait(0.01) is False
    task = asyncio.create_task(n.wait(10))
    await asyncio.sleep(0)
    n.notify()
    assert await task is True


async def test_a_cancel_landing_as_the_waiter_wakes_is_not_lost():
    # A deploy waiting at the gate is cancelled by the runner right after shutdown
    # closed the notifier; swallowing that cancel left the deploy waiting forever.
    n = Notifier()
    task = asyncio.create_task(n.wait(60))
    await asyncio.sleep(0)
    n.close()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
