"""Bearer tokens: only SHA-256 hashes are stored; lookups compare in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path

import msgspec

from kuadeploy.config import Config, Role, Sha256Hex, TokenConfig
from kuadeploy.files import write_atomic
from kuadeploy.ledger.store import utc_now

log = logging.getLogger(__name__)
ROLE_RANK: dict[str, int] = {"reader": 1, "deployer": 2, "admin": 3}


class StoredToken(msgspec.Struct):
    actor: str
    role: Role
    sha256: Sha256Hex
    created: str = ""


class TokenFile(msgspec.Struct):
    tokens: list[StoredToken] = []


class Principal(msgspec.Struct, frozen=True):
    actor: str
    role: Role

    def can(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "kua_" + secrets.token_urlsafe(32)


def tokens_path(data_dir: str) -> Path:
    return Path(data_dir) / "tokens.json"


def read_token_file(data_dir: str) -> TokenFile:
    try:
        return msgspec.json.decode(tokens_path(data_dir).read_bytes(), type=TokenFile)
    except FileNotFoundError:
        return TokenFile()


def add_token(data_dir: str, actor: str, role: Role) -> str:
    """Create a token, store its hash, return the token (shown once, never stored)."""
    token = new_token()
    current = read_token_file(data_dir)
    entry = StoredToken(actor=actor, role=role, sha256=token_hash(token), created=utc_now())
    data = msgspec.json.format(msgspec.json.encode(TokenFile([*current.tokens, entry])))
    write_atomic(tokens_path(data_dir), data, mode=0o600)
    return token


class TokenBook:
    """The tokens from the config plus the data dir's token file (re-read when it changes)."""

    # The token file is looked at again at most this often for known tokens, and on
    # every miss, so a token added by `kuadeploy token add` works at once.
    RECHECK_S = 1.0

    def __init__(self, config: Config):
        self._config_tokens = list(config.tokens)
        self._path = tokens_path(config.data_dir)
        self._stamp: tuple[int, int] | None = None
        self._entries: list[tuple[bytes, Principal]] = []
        self._checked = 0.0
        self._reload(strict=True)  # at start-up a bad token file stops serve, in one line

    def _reload(self, strict: bool = False) -> None:
        self._checked = time.monotonic()
        try:
            st = os.stat(self._path)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and self._entries:
            return
        changed, self._stamp = stamp != self._stamp, stamp
        try:
            stored = read_token_file(str(self._path.parent)).tokens if stamp else []
        except (OSError, msgspec.DecodeError) as exc:
            if strict:
                raise
            # A bad hand edit while serving: no 500 on every request, and no token the
            # edit may have meant to revoke keeps working. The config's tokens still do.
            if changed:
                log.error("ignoring the tokens in %s until it is fixed: %s", self._path, exc)
            stored = []
        all_tokens: list[TokenConfig | StoredToken] = [*self._config_tokens, *stored]
        self._entries = [
            (bytes.fromhex(t.sha256.lower()), Principal(t.actor, t.role)) for t in all_tokens
        ]

    def __len__(self) -> int:
        self._reload()
        return len(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        if time.monotonic() - self._checked > self.RECHECK_S:
            self._reload()  # a revoked token stops working within RECHECK_S
        # aiohttp keeps a header's non-UTF-8 bytes as surrogates: hash the bytes as sent
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = self._find(digest)
        if found is None:
            self._reload()
            found = self._find(digest)
        return found

    def _find(self, digest: bytes) -> Principal | None:
        found = None
        for stored, principal in self._entries:  # no early exit: time does not depend on which
            if hmac.compare_digest(stored, digest):
                found = principal
        return found
