"""A real kuadeploy server on 127.0.0.1 in a thread of its own, for synchronous clients
(schemathesis uses `requests`) that cannot share the test's event loop."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from aiohttp import web

from kuadeploy.config import Config
from kuadeploy.http.app import make_app
from kuadeploy.service import Service


@dataclass
class LiveServer:
    config: Config
    url: str = ""
    app: web.Application | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _failed: BaseException | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    def __enter__(self) -> LiveServer:
        self._thread = threading.Thread(target=self._run, name="kuadeploy-live", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._failed is not None:
            raise RuntimeError("the live server did not start") from self._failed
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._loop is not None and self._stop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._failed = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        service = await Service.open(self.config)
        self.app = make_app(service)
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await service.close()
