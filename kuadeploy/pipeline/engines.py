"""One Docker engine client per configured server, made on first use."""

from __future__ import annotations

from kuadeploy.adapters.docker import Engine, EngineUnavailable, TlsFiles
from kuadeploy.config import ServerConfig


class EnginePool:
    def __init__(self, servers: dict[str, ServerConfig]):
        self._servers = servers
        self._engines: dict[str, Engine] = {}

    def get(self, server: str) -> Engine:
        """The server's engine; EngineUnavailable when no client can be made for it (its
        TLS files are gone, say), like an engine that does not answer: callers already
        say so and go on, where an OSError would stop start-up or fail a request."""
        engine = self._engines.get(server)
        if engine is None:
            cfg = self._servers[server]
            tls = None
            if cfg.tls_cert or cfg.tls_key or cfg.tls_ca:
                tls = TlsFiles(cert=cfg.tls_cert, key=cfg.tls_key, ca=cfg.tls_ca)
            try:
                engine = Engine(cfg.docker, tls=tls)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                paths = (cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
                files = f" (tls files {', '.join(p for p in paths if p)})" if tls else ""
                raise EngineUnavailable(f"server {server}: no engine client{files}: {why}") from exc
            self._engines[server] = engine
        return engine

    async def close(self) -> None:
        for engine in self._engines.values():
            await engine.close()
        self._engines.clear()
