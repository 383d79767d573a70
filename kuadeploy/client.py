"""A small synchronous client of a running kuadeploy server, for the CLI (stdlib only:
one request per command needs no event loop)."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_TIMEOUT_S = 30.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The API never redirects, and urllib would send the Authorization header along
    to whatever host a redirect names: a 3xx is an error (the check is --url's)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


# for every request that carries a token (the witness's too)
NO_REDIRECTS = urllib.request.build_opener(_NoRedirect)


class ClientError(Exception):
    """One line for the user: what went wrong and what to check."""


class Client:
    def __init__(self, url: str, token: str | None, timeout: float = DEFAULT_TIMEOUT_S):
        if not url.startswith(("http://", "https://")):
            raise ClientError(f"--url {url!r} must start with http:// or https://")
        try:  # urllib raises these only at the request, as ValueErrors past our handlers
            parts = urlsplit(url)
            if not parts.hostname or parts.port == 0:
                raise ValueError("no host or port")
        except ValueError as exc:
            raise ClientError(f"--url {url!r} is not a valid URL ({exc})") from None
        if not token:
            raise ClientError("no token: pass --token or set KUA_TOKEN")
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout

    def history(self, app: str) -> dict[str, Any]:
        return self._shaped(self.get(f"/api/v1/apps/{quote(app, safe='')}/history"), "changes")

    def export(self, at: str | None) -> dict[str, Any]:
        return self.get("/api/v1/registry/export", {"at": at} if at else None)

    def deploy(self, app: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = self.request("POST", f"/api/v1/apps/{quote(app, safe='')}/deploy", body)
        return self._shaped(answer, "deploy_id")

    def runtime_status(self, app: str) -> dict[str, Any]:
        return self.get(f"/api/v1/apps/{quote(app, safe='')}/runtime-status")

    def deploy_view(self, deploy_id: str) -> dict[str, Any]:
        return self._shaped(self.get(f"/api/v1/deploys/{quote(deploy_id, safe='')}"), "status")

    def _shaped(self, doc: Any, key: str) -> dict[str, Any]:
        """`doc` when it is an object with `key`: a wrong --url (another service, a
        proxy's page) is a one-line error, not a KeyError in the caller."""
        if not isinstance(doc, dict) or key not in doc:
            raise ClientError(f"{self.url} answered JSON that is not kuadeploy's (check --url)")
        return doc

    def events(self, path: str, last_id: str | None = None) -> Iterator[tuple[str, dict]]:
        """(id, data) of each Server-Sent Event at `path` until the server ends the
        stream; a dropped connection is resumed from the last id seen."""
        while True:
            headers = {"Authorization": f"Bearer {self._token}", "Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            req = urllib.request.Request(self.url + path, headers=headers)
            try:
                with NO_REDIRECTS.open(req, timeout=max(self._timeout, 60)) as resp:
                    ident = None
                    for raw in resp:
                        line = raw.decode().rstrip("\r\n")
                        if line.startswith("id: "):
                            ident = line[4:]
                        elif line.startswith("data: ") and ident is not None:
                            last_id = ident
                            yield ident, self._shaped(_json_or_none(line[6:]), "type")
                return
            except urllib.error.HTTPError as exc:
                raise ClientError(_http_message(exc)) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, _BROKEN) as exc:
                if isinstance(exc, urllib.error.URLError) and isinstance(
                    exc.reason, ConnectionRefusedError
                ):
                    raise ClientError(f"cannot reach {self.url}: {_reason(exc.reason)}") from None
                continue  # the stream broke: resume after the last event seen

    def get(self, path: str, query: dict[str, str] | None = None) -> Any:
        url = self.url + path + (f"?{urlencode(query)}" if query else "")
        return self.request("GET", url[len(self.url) :])

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {**(headers or {}), "Authorization": f"Bearer {self._token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with NO_REDIRECTS.open(req, timeout=self._timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ClientError(_http_message(exc)) from None
        except urllib.error.URLError as exc:
            raise ClientError(f"cannot reach {self.url}: {_reason(exc.reason)}") from None
        except TimeoutError:
            raise ClientError(f"{self.url} did not answer within {self._timeout:g} s") from None
        # urllib wraps only the errors before an answer begins
        except (ConnectionError, http.client.IncompleteRead) as exc:
            raise ClientError(f"{self.url} broke off its answer: {_reason(exc)}") from None
        except _BROKEN as exc:
            raise ClientError(f"{self.url} did not answer in HTTP: {_reason(exc)}") from None
        except json.JSONDecodeError:
            raise ClientError(f"{self.url} answered something that is not JSON") from None


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


# An answer cut off or garbled mid-way (IncompleteRead, BadStatusLine, …).
_BROKEN = http.client.HTTPException


def _http_message(exc: urllib.error.HTTPError) -> str:
    if exc.code == 401:
        return "unauthorized (check --token)"
    if 300 <= exc.code < 400:
        where = exc.headers.get("Location") if exc.headers else None
        return f"redirected to {where}: not followed (check --url) (HTTP {exc.code})"
    try:
        problem = json.loads(exc.read())
        title, detail = problem.get("title"), problem.get("detail")
        errors = problem.get("errors") or []
    except (ValueError, AttributeError):
        title, detail, errors = None, None, []
    title = title or exc.reason or "error"
    text = f"{title.lower()}: {detail}" if detail and detail != title else title.lower()
    for error in errors[:20] if isinstance(errors, list) else []:  # validation problems
        if isinstance(error, dict) and error.get("message") == detail:  # the one problem
            text += f" ({error.get('path')})"
        elif isinstance(error, dict):
            text += f"; {error.get('path')}: {error.get('message')}"
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
    return " ".join(str(reason).split())[:200] or type(reason).__name__  # one line
