"""A real kuadeploy service on 127.0.0.1 with a real data dir, and a small client for it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp.test_utils import TestServer

from kuadeploy.config import Config, ServerConfig, TokenConfig
from kuadeploy.http.app import make_app
from kuadeploy.service import Service
from kuadeploy.tokens import token_hash

TOKENS = {"admin": "t-admin", "deployer": "t-deployer", "reader": "t-reader"}


def make_config(data_dir: Path, **overrides: Any) -> Config:
    base = Config(
        data_dir=str(data_dir),
        servers={"local": ServerConfig(docker="unix:///nonexistent/docker.sock")},
        tokens=[TokenConfig(actor=r, role=r, sha256=token_hash(t)) for r, t in TOKENS.items()],
        sse_heartbeat_s=0.5,
    )
    return msgspec.structs.replace(base, **overrides)


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, service: Service):
        self.session = session
        self.base = base
        self.service = service

    def url(self, path: str) -> str:
        return self.base + path

    async def call(
        self,
        method: str,
        path: str,
        *,
        role: str | None = "admin",
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        hdrs = dict(headers or {})
        if role is not None:
            hdrs.setdefault("Authorization", f"Bearer {TOKENS[role]}")
        if json is not None:
            data = msgspec.json.encode(json)
            hdrs.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.url(path), data=data, headers=hdrs) as resp:
            raw = await resp.read()
            body = msgspec.json.decode(raw) if raw and "json" in resp.content_type else raw
            return resp.status, body, resp

    async def head_seq(self) -> int:
        return self.service.ledger.head.seq


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Api]:
    service = await Service.open(config)
    server = TestServer(make_app(service), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(session, str(server.make_url("")).rstrip("/"), service)
    finally:
        await server.close()
        await service.close()


def entry_doc(branch: str = "main", **extra: Any) -> dict[str, Any]:
    doc = {"server": "local", "repo": "https://forge.example.org/infra/web.git", "branch": branch}
    return {**doc, **extra}
