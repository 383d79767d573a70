"""Wake every waiter when something new is committed (SSE streams, followers)."""

from __future__ import annotations

import asyncio


class Notifier:
    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def close(self) -> None:
        """Wake everyone now and make every later wait return at once (shutdown)."""
        self.closed = True
        self.notify()

    def notify(self, *_: object) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    async def wait(self, timeout: float) -> bool:
        """True when notified (or closed), False when `timeout` passed first."""
        if self.closed:
            return True
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancel that lands as
        # the waiter completes, and a cancelled deploy then waits on (runner.close hangs).
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._waiter)
        except TimeoutError:
            return False
        return True
