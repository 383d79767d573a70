"""A small synchronous client of a running kuadeploy server, for the CLI (stdlib only:
one request per command needs no event loop)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_TIMEOUT_S = 30.0


class ClientError(Exception):
    """One line for the user: what went wrong and what to check."""


class Client:
    def __init__(self, url: str, token: str | None, timeout: float = DEFAULT_TIMEOUT_S):
        if not url.startswith(("http://", "https://")):
            raise ClientError(f"--url {url!r} must start with http:// or https://")
        if not token:
            raise ClientError("no token: pass --token or set KUA_TOKEN")
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout

    def history(self, app: str) -> dict[str, Any]:
        return self.get(f"/api/v1/apps/{quote(app, safe='')}/history")

    def export(self, at: str | None) -> dict[str, Any]:
        return self.get("/api/v1/registry/export", {"at": at} if at else None)

    def get(self, path: str, query: dict[str, str] | None = None) -> Any:
        url = self.url + path + (f"?{urlencode(query)}" if query else "")
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._token}"})
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ClientError(_http_message(exc)) from None
        except urllib.error.URLError as exc:
            raise ClientError(f"cannot reach {self.url}: {_reason(exc.reason)}") from None
        except TimeoutError:
            raise ClientError(f"{self.url} did not answer within {self._timeout:g} s") from None
        except json.JSONDecodeError:
            raise ClientError(f"{self.url} answered something that is not JSON") from None


def _http_message(exc: urllib.error.HTTPError) -> str:
    if exc.code == 401:
        return "unauthorized (check --token)"
    try:
        problem = json.loads(exc.read())
        title, detail = problem.get("title"), problem.get("detail")
    except (ValueError, AttributeError):
        title, detail = None, None
    title = title or exc.reason or "error"
    text = f"{title.lower()}: {detail}" if detail and detail != title else title.lower()
    return f"{text} (HTTP {exc.code})"


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running? check --url)"
    if isinstance(reason, socket.gaierror):
        return "unknown host (check --url)"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)
