"""A minimal witness: remember a log's checkpoint, and check every later one extends it.

`kuadeploy audit witness --url URL --state FILE [--pubkey VKEY]`, run from cron:
fetch the latest checkpoint, check its signature (with the key given, or the one
recorded on the first run), fetch a consistency proof from the size recorded in
FILE and verify it, then record the new checkpoint in FILE (atomically). The
first run has nothing to compare with, so it only records: trust on first use.

The checks are pure functions (`read_checkpoint`, `check_extends`) over what was
fetched; `run_witness` does the fetching and the state file.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import msgspec

from kuadeploy.audit.merkle import ProofError, verify_consistency
from kuadeploy.audit.note import Checkpoint, NoteError, Verifier, open_checkpoint
from kuadeploy.client import NO_REDIRECTS
from kuadeploy.files import write_atomic

CHECKPOINT_PATH = "/api/v1/audit/checkpoint"
CONSISTENCY_PATH = "/api/v1/audit/proof/consistency"
_MAX_BODY = 1 << 20


class WitnessState(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    origin: str
    size: int
    root: str  # hex
    checkpoint: str  # the signed note as fetched
    vkey: str | None = None
    checked_at: str = ""


class WitnessFailure(Exception):
    """The log contradicts what this witness saw before, or its signature is bad:
    exit 1, the state file is left as it was."""


class FetchError(Exception):
    """The log could not be asked (network, HTTP status, malformed answer): exit 2."""


Fetch = Callable[[str], bytes]


def read_checkpoint(note: bytes, verifier: Verifier | None, origin: str | None) -> Checkpoint:
    """The checkpoint in `note`, signature checked when a key is known."""
    try:
        if verifier is not None:
            return open_checkpoint(note, [verifier], origin=origin)
        text = note.decode("utf-8")
        checkpoint = Checkpoint.parse(text[: text.rfind("\n\n") + 1])
    except NoteError as exc:
        raise WitnessFailure(f"checkpoint rejected: {exc}") from None
    except UnicodeDecodeError:
        raise WitnessFailure("checkpoint rejected: not UTF-8") from None
    if origin is not None and checkpoint.origin != origin:
        raise WitnessFailure(f"checkpoint is from {checkpoint.origin!r}, not {origin!r}")
    return checkpoint


def check_extends(old: WitnessState, new: Checkpoint, proof: list[bytes]) -> None:
    """That `new` extends the tree recorded in `old` (RFC 9162 §2.1.4.2)."""
    if new.size < old.size:
        raise WitnessFailure(
            f"the log shrank: it served size {old.size} before, now {new.size} (truncated)"
        )
    try:
        verify_consistency(old.size, new.size, proof, bytes.fromhex(old.root), new.root)
    except ProofError as exc:
        raise WitnessFailure(
            f"checkpoint of size {new.size} is not consistent with the size {old.size} "
            f"seen before (rewritten): {exc}"
        ) from None


def parse_consistency(body: bytes, first: int, second: int) -> list[bytes]:
    """The hashes of a `{"from","to","hashes":[hex…]}` answer for (first, second)."""
    try:
        doc = json.loads(body)
        if doc["from"] != first or doc["to"] != second:
            raise FetchError(
                f"asked for the proof {first}->{second}, got {doc['from']}->{doc['to']}"
            )
        hashes = [bytes.fromhex(h) for h in doc["hashes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise FetchError(f"malformed consistency proof: {exc}") from None
    return hashes


def run_witness(
    url: str,
    state_path: Path,
    vkey: str | None,
    fetch: Fetch,
    now: str,
) -> str:
    """One witness run; returns what happened, in a line. Raises WitnessFailure
    (the log misbehaves) or FetchError / NoteError (cannot check)."""
    old = _load_state(state_path)
    if old is not None and vkey and old.vkey and vkey != old.vkey:
        raise WitnessFailure(f"--pubkey differs from the key recorded in {state_path}")
    vkey = vkey or (old.vkey if old else None)
    verifier = Verifier.from_vkey(vkey) if vkey else None
    base = url.rstrip("/")
    note = fetch(base + CHECKPOINT_PATH)
    checkpoint = read_checkpoint(note, verifier, old.origin if old else None)
    signed = "signature verified" if verifier else "signature NOT checked (no --pubkey)"
    if old is None:
        message = (
            f"first run: recorded {checkpoint.origin} at size {checkpoint.size} "
            f"({signed}); trust on first use, nothing to compare with yet"
        )
    else:
        proof: list[bytes] = []
        if old.size not in (0, checkpoint.size) and checkpoint.size > old.size:
            query = urlencode({"from": old.size, "to": checkpoint.size})
            proof = parse_consistency(
                fetch(f"{base}{CONSISTENCY_PATH}?{query}"), old.size, checkpoint.size
            )
        check_extends(old, checkpoint, proof)
        message = (
            f"ok: {checkpoint.origin} size {checkpoint.size} extends size {old.size} ({signed})"
        )
    state = WitnessState(
        url=base,
        origin=checkpoint.origin,
        size=checkpoint.size,
        root=checkpoint.root.hex(),
        checkpoint=note.decode("utf-8"),
        vkey=vkey,
        checked_at=now,
    )
    write_atomic(state_path, msgspec.json.format(msgspec.json.encode(state), indent=2) + b"\n")
    return message


def http_fetch(token: str | None, timeout: float = 30) -> Fetch:
    """GET with urllib: the body of a 200 answer, else FetchError."""

    def fetch(url: str) -> bytes:
        request = urllib.request.Request(url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            # not urlopen: it follows a redirect to any host, the token along with it
            with NO_REDIRECTS.open(request, timeout=timeout) as response:
                return response.read(_MAX_BODY)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"GET {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"GET {url}: {exc}") from None

    return fetch


def _load_state(path: Path) -> WitnessState | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(raw, type=WitnessState)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FetchError(f"state file {path}: {exc}") from None
