"""The offline audit commands' logic: a data dir checked against a signed checkpoint,
the verifier key, one witness run. The CLI only parses arguments and prints."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from kuadeploy.audit import witness as witness_
from kuadeploy.audit.checkpoints import checkpoint_problem, scan_ledger
from kuadeploy.audit.keys import KeyFileError, load_signer
from kuadeploy.audit.note import NoteError, Verifier, open_checkpoint
from kuadeploy.config import Config


class CheckpointCheck(msgspec.Struct):
    problem: str | None
    size: int | None = None
    origin: str | None = None

    @property
    def summary(self) -> str:
        return f"checkpoint {self.origin} of size {self.size}: signature and root verified"

    def to_json(self) -> dict:
        return {"ok": self.problem is None, "size": self.size, "problem": self.problem}


class CheckpointFileError(Exception):
    """The checkpoint file cannot be read at all (exit 2, not a verdict)."""


def read_checkpoint_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointFileError(f"checkpoint {path}: {exc.strerror}") from None


def check_checkpoint(conn: sqlite3.Connection, note: bytes, vkey: str) -> CheckpointCheck:
    """The checkpoint's signature with `vkey`, then the ledger's length and its root
    at the checkpoint's size, recomputed from the bodies."""
    try:
        verifier = Verifier.from_vkey(vkey)
    except NoteError as exc:
        raise CheckpointFileError(f"--pubkey: {exc}") from None
    try:
        checkpoint = open_checkpoint(note, [verifier])
    except NoteError as exc:
        return CheckpointCheck(f"checkpoint signature does not verify with the given key ({exc})")
    roots, tree, _ = scan_ledger(conn, [checkpoint.size])
    problem = checkpoint_problem(
        tree.size, roots.get(checkpoint.size), checkpoint.size, checkpoint.root
    )
    return CheckpointCheck(problem, checkpoint.size, checkpoint.origin)


def verifier_key(config: Config) -> str:
    """The C2SP vkey of the data dir's (or configured) checkpoint key."""
    try:
        return load_signer(config, create=False).vkey
    except KeyFileError as exc:
        raise CheckpointFileError(f"{exc} (the key is made when the server first starts)") from None


def witness(
    url: str, state: Path, vkey: str | None, token: str | None, now: str
) -> tuple[int, str]:
    """One witness run: (0, report), (1, why the log is not trusted), (2, why no check ran)."""
    try:
        return 0, witness_.run_witness(url, state, vkey, witness_.http_fetch(token), now)
    except witness_.WitnessFailure as exc:
        return 1, str(exc)
    except (witness_.FetchError, NoteError, OSError) as exc:
        return 2, str(exc)
