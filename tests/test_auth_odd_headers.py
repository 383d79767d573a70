"""Credentials that are not UTF-8: HTTP header values are bytes, and a client may send
any. Such a token or webhook Authorization is simply not a known one: 401 as
problem+json (DESIGN §4), never a 500 with a traceback in the log."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

from kuadeploy.config import WebhookConfig
from tests.api_support import make_config, running
from tests.forge import ForgeRepo, deliver
from tests.webhook_support import SECRET


async def raw_request(base: str, head: bytes, body: bytes = b"") -> tuple[int, bytes, bytes]:
    """(status, headers, body) of one request written byte for byte."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    headers, _, content = answer.partition(b"\r\n\r\n")
    return int(headers.split()[1]), headers, content


async def test_a_bearer_token_that_is_not_utf8_is_401(tmp_path):
    async with running(make_config(tmp_path)) as api:
        head = b"GET /api/v1/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t-adm\xff\xfe\r\n"
        status, headers, body = await raw_request(api.base, head)
        assert status == 401, body
        assert b"application/problem+json" in headers
        assert json.loads(body)["status"] == 401


async def test_a_webhook_authorization_that_is_not_utf8_is_401(tmp_path):
    hooks = WebhookConfig(secret=SECRET, authorization="Bearer hook-token-77")
    async with running(make_config(tmp_path, webhook=hooks)) as api:
        d = deliver("push", ForgeRepo().push("1" * 40), SECRET)
        lines = b"".join(f"{k}: {v}\r\n".encode() for k, v in d.headers.items())
        head = b"POST /webhook/forgejo HTTP/1.1\r\nHost: x\r\n" + lines
        head += b"Authorization: Bearer hook-token-77\xff\r\n"
        status, headers, body = await raw_request(api.base, head, d.body)
        assert status == 401, body
        assert b"application/problem+json" in headers
