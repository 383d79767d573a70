"""C2SP signed notes with Ed25519 (https://c2sp.org/signed-note) and the tlog
checkpoints they carry (https://c2sp.org/tlog-checkpoint).

A note is its text (ending in a newline), a blank line, and signature lines
`— <key name> <base64(4-byte key id || signature)>`. A checkpoint is a note whose
text is `<origin>\\n<decimal tree size>\\n<base64 root>\\n` plus optional extension
lines.

Key strings are those of golang.org/x/mod/sumdb/note, so keys move between this
module and Go tooling (and the witnesses built on it):
verifier `<name>+<8 hex key id>+<base64(0x01 || 32-byte public key)>`,
signer `PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || 32-byte seed)>`.

Parsing is strict: one spelling is accepted for every value (canonical base64,
decimal without leading zeros, lowercase hex), so a signed text has exactly one
meaning.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kuadeploy.audit.merkle import HASH_SIZE

# signed-note §Signature types: 0x01 is Ed25519 as that document specifies it.
ED25519 = 0x01
_ED25519_KEY_SIZE = 32
_ED25519_SIGNATURE_SIZE = 64
_KEY_ID_SIZE = 4

# signed-note §Format: em dash (U+2014), space, key name, space, base64, newline.
_SIGNATURE_PREFIX = "\u2014 "
# signed-note: verifiers must accept at least 16 signatures; sumdb/note stops at 100.
MAX_SIGNATURES = 100

_PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}")
# tlog-checkpoint §Note text: ASCII decimal, no leading zeroes unless the size is 0.
_TREE_SIZE = re.compile(r"0|[1-9][0-9]*")
_MAX_TREE_SIZE = 2**64 - 1
# signed-note §Format: no ASCII control characters (below U+0020) other than newline.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteError(ValueError):
    """A malformed note, key string or checkpoint."""


class VerificationError(NoteError):
    """A note that is well formed but not validly signed by a known key."""


def is_valid_key_name(name: str) -> bool:
    """signed-note §Format: non-empty, without Unicode spaces or `+`. Control
    characters are excluded too: no note may contain them (but newline, which is
    a space)."""
    return (
        bool(name)
        and "+" not in name
        and not any(ch.isspace() for ch in name)
        and not _CONTROL_CHARACTER.search(name)
        and _is_utf8(name)
    )


def key_id(name: str, public_key: bytes) -> bytes:
    """signed-note §Ed25519 signatures:
    SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4]."""
    return sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:_KEY_ID_SIZE]


@dataclass(frozen=True, slots=True)
class Verifier:
    """A named Ed25519 public key that checks note signatures."""

    name: str
    public_key: bytes
    key_id: bytes = field(init=False)
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not is_valid_key_name(self.name):
            raise NoteError(f"invalid key name {self.name!r}")
        if len(self.public_key) != _ED25519_KEY_SIZE:
            raise NoteError("an Ed25519 public key is 32 bytes")
        object.__setattr__(self, "key_id", key_id(self.name, self.public_key))
        try:
            key = Ed25519PublicKey.from_public_bytes(self.public_key)
        except ValueError:
            raise NoteError("not an Ed25519 public key") from None
        object.__setattr__(self, "_key", key)

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse `<name>+<8 hex key id>+<base64(0x01 || public key)>`."""
        name, sep, rest = vkey.partition("+")
        if not sep:
            raise NoteError("verifier key: expected <name>+<key id>+<key>")
        public_key = _parse_key_material(name, rest, "verifier key")
        verifier = cls(name, public_key)
        if verifier.key_id.hex() != rest[:8]:
            raise NoteError("verifier key: the key id does not match the name and key")
        return verifier

    @property
    def vkey(self) -> str:
        encoded = base64.b64encode(bytes([ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, text)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class Signer:
    """A named Ed25519 private key (as its 32-byte RFC 8032 seed) that signs notes."""

    name: str
    seed: bytes = field(repr=False)
    _key: Ed25519PrivateKey = field(init=False, repr=False, compare=False)
    verifier: Verifier = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not is_valid_key_name(self.name):
            raise NoteError(f"invalid key name {self.name!r}")
        if len(self.seed) != _ED25519_KEY_SIZE:
            raise NoteError("an Ed25519 seed is 32 bytes")
        key = Ed25519PrivateKey.from_private_bytes(self.seed)
        public_key = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "verifier", Verifier(self.name, public_key))

    @classmethod
    def generate(cls, name: str) -> Signer:
        """A new random key (from the OS CSPRNG, via `cryptography`)."""
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(name, seed)

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse `PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || seed)>`."""
        if not skey.startswith(_PRIVATE_KEY_PREFIX):
            raise NoteError("signer key: expected PRIVATE+KEY+<name>+<key id>+<key>")
        name, sep, rest = skey[len(_PRIVATE_KEY_PREFIX) :].partition("+")
        if not sep:
            raise NoteError("signer key: expected PRIVATE+KEY+<name>+<key id>+<key>")
        signer = cls(name, _parse_key_material(name, rest, "signer key"))
        # The key id names the public key, so it can only be checked once derived.
        if signer.key_id.hex() != rest[:8]:
            raise NoteError("signer key: the key id does not match the name and key")
        return signer

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id

    @property
    def skey(self) -> str:
        encoded = base64.b64encode(bytes([ED25519]) + self.seed).decode()
        return f"{_PRIVATE_KEY_PREFIX}{self.name}+{self.key_id.hex()}+{encoded}"

    @property
    def vkey(self) -> str:
        return self.verifier.vkey

    def sign(self, text: bytes) -> bytes:
        return self._key.sign(text)


class Signature(NamedTuple):
    """One signature line of a note."""

    name: str
    key_id: bytes
    signature: bytes


class OpenedNote(NamedTuple):
    """A note whose signatures by known keys all verified (at least one)."""

    text: str
    verified: tuple[Signature, ...]  # by the given verifiers
    unverified: tuple[Signature, ...]  # by keys not given, ignored (signed-note §Signatures)


def sign_note(text: str, *signers: Signer) -> str:
    """The signed note: `text`, a blank line, one signature line per signer."""
    if not signers:
        raise NoteError("a signed note needs at least one signature")
    _check_note_characters(text)
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    message = text.encode()
    lines = []
    for signer in signers:
        blob = base64.b64encode(signer.key_id + signer.sign(message)).decode()
        lines.append(f"{_SIGNATURE_PREFIX}{signer.name} {blob}\n")
    return text + "\n" + "".join(lines)


def open_note(note: str | bytes, verifiers: Sequence[Verifier]) -> OpenedNote:
    """Parse `note` and check its signatures against `verifiers` (signed-note
    §Signatures): a signature whose (name, key id) is unknown is ignored; one by a
    known key must verify, else the whole note is rejected; and at least one must
    be by a known key. Raises NoteError (malformed) or VerificationError."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("note is not valid UTF-8") from None
    _check_note_characters(note)
    # The text is separated from the signatures by the last empty line.
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise NoteError("note must end with a signature line and a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    known = _index_verifiers(verifiers)
    message = text.encode()
    verified, unverified = [], []
    for line in lines:
        signature = _parse_signature_line(line)
        verifier = known.get((signature.name, signature.key_id))
        if verifier is None:
            unverified.append(signature)
        elif verifier.verify(message, signature.signature):
            verified.append(signature)
        else:
            raise VerificationError(
                f"invalid signature by {signature.name}+{signature.key_id.hex()}"
            )
    if not verified:
        raise VerificationError("note has no signature by a known key")
    return OpenedNote(text, tuple(verified), tuple(unverified))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tlog checkpoint's note text: a log's Merkle tree head (RFC 6962 SHA-256)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise NoteError("checkpoint origin must be one non-empty line")
        _check_note_characters(self.origin)
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise NoteError(f"checkpoint tree size {self.size} out of range")
        if len(self.root) != HASH_SIZE:
            raise NoteError(f"checkpoint root must be {HASH_SIZE} bytes")
        for line in self.extensions:
            if not line or "\n" in line:
                raise NoteError("checkpoint extension lines must be non-empty lines")
            _check_note_characters(line)

    @property
    def text(self) -> str:
        """tlog-checkpoint §Note text: origin, size, base64 root, extensions."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "\n".join([*lines, *self.extensions]) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint in a note text, strictly: at least three non-empty lines."""
        if not text.endswith("\n"):
            raise NoteError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or not all(lines):
            raise NoteError("checkpoint text must be three or more lines, none of them empty")
        origin, size_line, root_line, *extensions = lines
        if not _TREE_SIZE.fullmatch(size_line):
            raise NoteError(f"checkpoint tree size {size_line!r} is not a canonical decimal")
        root = _strict_b64decode(root_line, "checkpoint root")
        return cls(origin, int(size_line), root, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, *signers: Signer) -> str:
    return sign_note(checkpoint.text, *signers)


def open_checkpoint(
    note: str | bytes, verifiers: Sequence[Verifier], *, origin: str | None = None
) -> Checkpoint:
    """The checkpoint in a note validly signed by one of `verifiers` (and from
    `origin`, when given)."""
    checkpoint = Checkpoint.parse(open_note(note, verifiers).text)
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError(f"checkpoint is from {checkpoint.origin!r}, not {origin!r}")
    return checkpoint


# --- helpers -----------------------------------------------------------------------------


def _parse_key_material(name: str, rest: str, what: str) -> bytes:
    """From `<8 hex key id>+<base64(0x01 || key)>`, the 32 key bytes."""
    key_id_hex, sep, encoded = rest.partition("+")
    if not sep or not _KEY_ID_HEX.fullmatch(key_id_hex):
        raise NoteError(f"{what}: the key id must be 8 lowercase hex digits")
    if not is_valid_key_name(name):
        raise NoteError(f"{what}: invalid key name {name!r}")
    material = _strict_b64decode(encoded, what)
    if not material or material[0] != ED25519:
        raise NoteError(f"{what}: not an Ed25519 key (type 0x01)")
    if len(material) != 1 + _ED25519_KEY_SIZE:
        raise NoteError(f"{what}: an Ed25519 key is 32 bytes")
    return material[1:]


def _parse_signature_line(line: str) -> Signature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise NoteError(f"malformed signature line {line!r}")
    name, sep, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    if not sep or not is_valid_key_name(name):
        raise NoteError(f"malformed signature line {line!r}")
    blob = _strict_b64decode(encoded, "signature")
    if len(blob) <= _KEY_ID_SIZE:
        raise NoteError("signature is too short")
    return Signature(name, blob[:_KEY_ID_SIZE], blob[_KEY_ID_SIZE:])


def _index_verifiers(verifiers: Sequence[Verifier]) -> dict[tuple[str, bytes], Verifier]:
    known: dict[tuple[str, bytes], Verifier] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_id)
        if slot in known and known[slot] != verifier:
            # Two keys with one name and id: a verifier list nobody should trust.
            raise NoteError(f"ambiguous verifier key {verifier.name}+{verifier.key_id.hex()}")
        known[slot] = verifier
    return known


def _strict_b64decode(encoded: str, what: str) -> bytes:
    """RFC 4648 §4 base64 in its one canonical spelling (padding, zero pad bits)."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what}: invalid base64") from None
    if base64.b64encode(raw).decode() != encoded:
        raise NoteError(f"{what}: non-canonical base64")
    return raw


def _check_note_characters(text: str) -> None:
    """signed-note §Format: valid UTF-8, no ASCII control character but newline."""
    if not _is_utf8(text):
        raise NoteError("note is not valid UTF-8")
    control = _CONTROL_CHARACTER.search(text)
    if control:
        raise NoteError(f"note contains the control character {control.group()!r}")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True
