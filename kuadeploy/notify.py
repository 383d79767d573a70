"""Wake every waiter when something new is committed (SSE streams, followers)."""

from __future__ import annotations

import asyncio


class Notifier:
    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def notify(self, *_: object) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    async def wait(self, timeout: float) -> bool:
        """True when notified, False when `timeout` passed first."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._waiter), timeout)
        except TimeoutError:
            return False
        return True
