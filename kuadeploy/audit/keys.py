"""The checkpoint signing key: made once at first start, or read from a configured file.

The file holds one line, the signer key string of golang.org/x/mod/sumdb/note
(`PRIVATE+KEY+<name>+<key id>+<key>`), so Go tooling can read it too. Its name is
the checkpoints' origin unless `checkpoint_origin` is configured: stored with the
key, the origin stays put when the host (or a container's hostname) changes.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path

from kuadeploy.audit.note import NoteError, Signer, is_valid_key_name
from kuadeploy.config import Config

log = logging.getLogger(__name__)

_ODD = re.compile(r"[^A-Za-z0-9._-]+")


class KeyFileError(Exception):
    """The key file is missing (when configured) or unreadable; a one-line message."""


def default_key_name(hostname: str | None = None) -> str:
    """`kuadeploy/<hostname>`, with anything but letters, digits, `.`, `_`, `-` in
    the hostname made a `-` (a key name must not hold spaces or `+`)."""
    host = _ODD.sub("-", socket.gethostname() if hostname is None else hostname).strip("-")
    name = f"kuadeploy/{host or 'localhost'}"
    assert is_valid_key_name(name), name
    return name


def read_signer(path: Path) -> Signer:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"checkpoint key {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"checkpoint key {path}: {exc}") from None
    try:
        signer = Signer.from_skey(text.strip())
    except NoteError as exc:
        raise KeyFileError(f"checkpoint key {path}: {exc}") from None
    if path.stat().st_mode & 0o077:
        log.warning("checkpoint key %s is readable by others than its owner (chmod 600)", path)
    return signer


def create_signer(path: Path, name: str) -> Signer:
    """Make a new key file, mode 0600. Written whole under a temp name (O_EXCL) and
    linked into place, so a crash leaves no half key and of two concurrent first
    starts one key wins and both use it."""
    signer = Signer.generate(name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(signer.skey + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_signer(path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    log.info("made checkpoint key %s (%s)", path, signer.vkey)
    return signer


def load_signer(config: Config, *, create: bool = True) -> Signer:
    """The configured key (which must exist), else DATA_DIR/keys/checkpoint.key,
    made on first use when `create`."""
    path = config.checkpoint_key_path
    if config.checkpoint_key or not create or path.exists():
        return read_signer(path)
    name = config.checkpoint_origin or default_key_name()
    if not is_valid_key_name(name):
        raise KeyFileError(f"checkpoint_origin {name!r} is not a valid key name (no spaces or +)")
    return create_signer(path, name)


def checkpoint_origin(config: Config, signer: Signer) -> str:
    return config.checkpoint_origin or signer.name
