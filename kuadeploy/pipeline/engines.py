"""One Docker engine client per configured server, made on first use."""

from __future__ import annotations

from kuadeploy.adapters.docker import Engine, TlsFiles
from kuadeploy.config import ServerConfig


class EnginePool:
    def __init__(self, servers: dict[str, ServerConfig]):
        self._servers = servers
        self._engines: dict[str, Engine] = {}

    def get(self, server: str) -> Engine:
        engine = self._engines.get(server)
        if engine is None:
            cfg = self._servers[server]
            tls = None
            if cfg.tls_cert or cfg.tls_key or cfg.tls_ca:
                tls = TlsFiles(cert=cfg.tls_cert, key=cfg.tls_key, ca=cfg.tls_ca)
            engine = self._engines[server] = Engine(cfg.docker, tls=tls)
        return engine

    async def close(self) -> None:
        for engine in self._engines.values():
            await engine.close()
        self._engines.clear()
