"""Is a delivery from the forge? HMAC-SHA256 of the signed bytes with a configured secret.

Forgejo and Gitea sign the JSON text of the payload (also when it travels inside a
form body) and send the same lowercase hex digest as `X-Forgejo-Signature`,
`X-Gitea-Signature` and `X-Hub-Signature-256: sha256=<hex>` (Gitea sends no
X-Forgejo-* headers). Pure functions; `headers` is any case-insensitive mapping.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Literal
from urllib.parse import unquote_to_bytes

from kuadeploy.config import WebhookConfig

SIGNATURE_HEADERS = ("X-Forgejo-Signature", "X-Gitea-Signature", "X-Hub-Signature-256")
Scope = Literal["repo", "default"]


def signatures(headers: Mapping[str, str]) -> list[bytes]:
    """Every well-formed SHA-256 digest the request carries; malformed ones are skipped."""
    found = []
    for name in SIGNATURE_HEADERS:
        value = (headers.get(name) or "").strip()
        if name == "X-Hub-Signature-256":
            scheme, sep, value = value.partition("=")
            if not sep or scheme.lower() != "sha256":
                continue
        try:
            digest = bytes.fromhex(value)
        except ValueError:
            continue
        if len(digest) == hashlib.sha256().digest_size:
            found.append(digest)
    return found


def configured(config: WebhookConfig) -> bool:
    """Any secret at all: without one no delivery can ever verify."""
    return bool(config.secret) or any(config.repos.values())


def candidate_secrets(config: WebhookConfig, repo: str | None) -> list[tuple[Scope, str]]:
    """The secrets to try, in order: the one configured for `repo`, then the default.
    Empty strings are not secrets (Forgejo signs nothing when its secret is empty)."""
    out: list[tuple[Scope, str]] = []
    own = _repo_secret(config.repos, repo) if repo else None
    if own:
        out.append(("repo", own))
    if config.secret:
        out.append(("default", config.secret))
    return out


def _repo_secret(repos: dict[str, str], repo: str) -> str | None:
    if repo in repos:
        return repos[repo]
    folded = repo.casefold()  # forges treat owner/name case-insensitively
    return next((secret for name, secret in repos.items() if name.casefold() == folded), None)


def verify(signed: bytes, digests: list[bytes], secrets: list[tuple[Scope, str]]) -> Scope | None:
    """The scope of the first secret whose HMAC of `signed` is one of `digests`."""
    for scope, secret in secrets:
        mac = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
        if any(hmac.compare_digest(mac, d) for d in digests):
            return scope
    return None


def authorization_ok(config: WebhookConfig, header: str | None) -> bool:
    """The shared Authorization header value, when one is configured."""
    if not config.authorization:
        return True
    # the header's bytes as sent (aiohttp keeps non-UTF-8 ones as surrogates)
    return header is not None and hmac.compare_digest(
        header.encode("utf-8", "surrogateescape"), config.authorization.encode()
    )


def form_payload(body: bytes) -> bytes | None:
    """The exact bytes of the `payload` field of an x-www-form-urlencoded body (Go's
    url.Values.Encode: `+` for space, %XX for the rest), without any re-encoding."""
    for pair in body.split(b"&"):
        name, _, value = pair.partition(b"=")
        if unquote_to_bytes(name.replace(b"+", b" ")) == b"payload":
            return unquote_to_bytes(value.replace(b"+", b" "))
    return None
