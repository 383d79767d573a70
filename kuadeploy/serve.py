"""`kuadeploy serve`: run the service until SIGTERM/SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import socket
import sqlite3
import sys

import msgspec
from aiohttp import web

from kuadeploy.config import Config
from kuadeploy.http.app import REQUEST_LOG, make_app
from kuadeploy.ledger import SchemaError
from kuadeploy.pipeline.secrets import in_use, mask
from kuadeploy.service import Service, StartupError

log = logging.getLogger("kuadeploy.serve")


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name}
        if isinstance(record.msg, dict):  # access lines: our own fields, nothing quoted
            line.update(record.msg)
        else:
            line["msg"] = mask(record.getMessage(), in_use())
        if record.exc_info:
            line["exc"] = mask(self.formatException(record.exc_info), in_use())
        return json.dumps(line)


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def bind(listen: str) -> socket.socket:
    """The listening socket, bound before the service opens: a self-deploy's new
    instance records its success while opening, which must not happen when it
    could never serve (port taken). Until the service is up, connections wait."""
    host, port = parse_listen(listen)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise StartupError(f"cannot listen on {listen}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {listen}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def tune_gc() -> None:
    """Start-up's objects (config, projections, modules) move out of the collector's
    sight, and the young generation is collected every 10,000 allocations instead of
    700: a request allocates dozens of containers, so the default ran a collection
    every few requests, ~7 % of a durable PATCH (the idea of Instagram's gc.freeze)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def serve(config: Config, *, accept_ledger_rewind: bool = False) -> None:
    sock = bind(config.listen)
    try:
        service = await Service.open(config, accept_ledger_rewind=accept_ledger_rewind)
    except (OSError, sqlite3.DatabaseError, SchemaError, msgspec.DecodeError) as exc:
        # a data dir that is a file or read-only, a ledger that is no database, a
        # garbled tokens.json: the user's to mend, so one line (exit 2), no traceback
        sock.close()
        raise StartupError(f"data dir {config.data_dir}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    if service.bootstrap_token:
        # Shown once: only its hash is stored (DESIGN §6).
        print(f"Created an admin token (shown once, store it now): {service.bootstrap_token}")
        sys.stdout.flush()
    app = make_app(service)
    app[REQUEST_LOG].stream = sys.stderr.buffer  # JSON lines like the rest, batched
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=30)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    log.info({"msg": "listening", "listen": config.listen, "head_seq": service.ledger.head.seq})
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info({"msg": "stopping: finishing in-flight requests"})
    await runner.cleanup()  # stop accepting, let in-flight handlers finish
    await service.close()  # every queued append is committed before the ledger closes
    log.info({"msg": "stopped", "head_seq": service.ledger.head.seq})
