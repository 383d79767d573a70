"""C2SP signed notes and tlog checkpoints: Go sumdb/note known answers, round trips,
and every way a note, key or checkpoint must be refused."""

from __future__ import annotations

import base64

import pytest

from kuadeploy.audit.merkle import EMPTY_ROOT
from kuadeploy.audit.note import (
    MAX_SIGNATURES,
    Checkpoint,
    NoteError,
    Signer,
    VerificationError,
    Verifier,
    is_valid_key_name,
    key_id,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)

# --- known answers -----------------------------------------------------------------------
# golang.org/x/mod/sumdb/note: the package documentation and note_test.go /
# example_test.go (ExampleSign, ExampleOpen, ExampleSign_add_signatures). EnochRoot's
# key comes from GenerateKey reading an all-zero "random" source: seed = 32 zero bytes.

PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_LINE = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvq"
    "fqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_LINE = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oO"
    "TGwnWLox33WWd1RvMc+QQ=\n"
)
SIGNED = TEXT + "\n" + PETER_LINE
DOUBLY_SIGNED = SIGNED + ENOCH_LINE

# c2sp.org/tlog-checkpoint: the example checkpoint's note text.
C2SP_CHECKPOINT_TEXT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)

PETER = Signer.from_skey(PETER_SKEY)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PETER_PUBLIC_KEY = PETER.verifier.public_key


ENOCH = Signer("EnochRoot", bytes(32))


def test_go_sumdb_note_keys() -> None:
    assert PETER.vkey == PETER_VKEY
    assert PETER.skey == PETER_SKEY
    assert PETER.key_id == bytes.fromhex("c74f20a3")
    assert ENOCH.vkey == ENOCH_VKEY
    verifier = Verifier.from_vkey(PETER_VKEY)
    assert verifier == PETER.verifier
    assert verifier.vkey == PETER_VKEY
    # The key id rule itself, from the raw public key in the vkey.
    public_key = base64.b64decode(PETER_VKEY.split("+", 2)[2])[1:]
    assert key_id("PeterNeumann", public_key) == bytes.fromhex("c74f20a3")
    assert key_id("PeterNeumann2", public_key) != bytes.fromhex("c74f20a3")


def test_go_sumdb_note_signatures() -> None:
    # Ed25519 is deterministic (RFC 8032), so the signed notes match byte for byte.
    assert sign_note(TEXT, PETER) == SIGNED
    assert sign_note(TEXT, PETER, ENOCH) == DOUBLY_SIGNED
    opened = open_note(SIGNED, [Verifier.from_vkey(PETER_VKEY)])
    assert opened.text == TEXT
    assert [(s.name, s.key_id.hex()) for s in opened.verified] == [("PeterNeumann", "c74f20a3")]
    assert opened.unverified == ()


def test_unknown_signatures_are_ignored_known_ones_all_checked() -> None:
    peter, enoch = Verifier.from_vkey(PETER_VKEY), Verifier.from_vkey(ENOCH_VKEY)
    opened = open_note(DOUBLY_SIGNED.encode(), [peter])
    assert [s.name for s in opened.verified] == ["PeterNeumann"]
    assert [s.name for s in opened.unverified] == ["EnochRoot"]
    assert len(open_note(DOUBLY_SIGNED, [peter, enoch]).verified) == 2
    # A bad signature by a known key rejects the note, even beside a good one.
    forged = ENOCH_LINE.replace("rwz+eBzm", "rwz+eBzn")
    with pytest.raises(VerificationError):
        open_note(SIGNED + forged, [peter, enoch])


# --- round trips and rejections ----------------------------------------------------------


def test_generated_key_round_trip() -> None:
    signer = Signer.generate("kuadeploy/bruno")
    assert Signer.from_skey(signer.skey) == signer
    assert Verifier.from_vkey(signer.vkey) == signer.verifier
    assert signer.seed not in repr(signer).encode()  # never print the private key
    note = sign_note("hello\n\nworld\n", signer)
    assert open_note(note, [Verifier.from_vkey(signer.vkey)]).text == "hello\n\nworld\n"
    assert Signer.generate("kuadeploy/bruno") != signer


def test_note_by_another_key_is_rejected() -> None:
    other = Signer.generate("PeterNeumann")  # same name, so another key id
    with pytest.raises(VerificationError, match="no signature by a known key"):
        open_note(sign_note(TEXT, other), [PETER.verifier])
    with pytest.raises(VerificationError, match="no signature by a known key"):
        open_note(SIGNED, [other.verifier])
    with pytest.raises(VerificationError):
        open_note(SIGNED, [])
    # Another key that claims the known key's name and id: its signature fails.
    blob = base64.b64encode(PETER.key_id + other.sign(TEXT.encode())).decode()
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(f"{TEXT}\n— PeterNeumann {blob}\n", [PETER.verifier])


@pytest.mark.parametrize(
    "changed",
    [
        SIGNED.replace("your problem,", "your problem;"),
        SIGNED.replace("If you", "if you"),
        "\n" + SIGNED,  # a text with one more (empty) line
        TEXT + "\n\n" + PETER_LINE,  # the same, at the end
        SIGNED.replace("is.\n\n", "is. \n\n"),
    ],
)
def test_note_with_changed_text_is_rejected(changed: str) -> None:
    with pytest.raises(VerificationError):
        open_note(changed, [PETER.verifier])


@pytest.mark.parametrize(
    ("note", "why"),
    [
        (TEXT + PETER_LINE, "no blank line"),
        (SIGNED[:-1], "no final newline"),
        (TEXT + "\n", "no signature line"),
        (SIGNED + "\n", "a blank line after the signatures"),
        (SIGNED.replace("— ", "- "), "hyphen instead of em dash"),
        (SIGNED.replace("— ", "—"), "no space after the em dash"),
        (SIGNED.replace("— ", "—  "), "two spaces after the em dash"),
        (SIGNED.replace("PeterNeumann ", "PeterNeumann  "), "two spaces before the signature"),
        (SIGNED.replace("PeterNeumann ", "PeterNeumann\t"), "a tab"),
        (SIGNED.replace("PeterNeumann", "Peter+Neumann"), "a + in the key name"),
        (SIGNED.replace("PeterNeumann", "Peter\u00a0Neumann"), "a Unicode space in the name"),
        (SIGNED.replace("AcElZ", "AcE!Z"), "invalid base64"),
        (SIGNED.replace("JnAM=", "JnAM"), "missing base64 padding"),
        (SIGNED.replace("JnAM=", "JnAN="), "non-zero base64 pad bits"),
        (TEXT + "\n— PeterNeumann x08gow==\n", "a signature of only a key id"),
        (SIGNED.replace("problem,\n", "problem,\r\n"), "a carriage return"),
        (SIGNED.replace("problem,", "problem,\x00"), "a NUL"),
        (SIGNED + PETER_LINE.replace("—", "x"), "a line that is no signature"),
    ],
)
def test_malformed_notes_are_rejected(note: str, why: str) -> None:
    with pytest.raises(NoteError):
        open_note(note, [PETER.verifier])
    assert not isinstance(_error(note), VerificationError), why


def _error(note: str) -> Exception:
    try:
        open_note(note, [PETER.verifier])
    except NoteError as exc:
        return exc
    raise AssertionError("accepted")


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(NoteError, match="UTF-8"):
        open_note(SIGNED.encode().replace(b"If", b"I\xff"), [PETER.verifier])
    with pytest.raises(NoteError, match="UTF-8"):
        open_note(SIGNED.replace("If", "I\udcff"), [PETER.verifier])


def test_signature_count_is_bounded() -> None:
    signers = [Signer.generate(f"witness{i}") for i in range(MAX_SIGNATURES)]
    many = sign_note(TEXT, *signers)
    assert len(open_note(many, [signers[0].verifier]).unverified) == MAX_SIGNATURES - 1
    with pytest.raises(NoteError, match="more than"):
        open_note(many + PETER_LINE, [PETER.verifier])


def test_ambiguous_verifier_list_is_refused() -> None:
    twin = Verifier("PeterNeumann", bytes(32))
    object.__setattr__(twin, "key_id", PETER.key_id)  # a forged id, as a hostile list might
    with pytest.raises(NoteError, match="ambiguous"):
        open_note(SIGNED, [PETER.verifier, twin])


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\nb", "a\tb", "a\u2003b", "a\x01b"])
def test_invalid_key_names_are_refused(name: str) -> None:
    assert not is_valid_key_name(name)
    with pytest.raises(NoteError):
        Signer.generate(name)


def test_valid_key_names() -> None:
    for name in ["kuadeploy/bruno", "example.com/log42", "Ωmega", "a-b_c.d:e"]:
        assert is_valid_key_name(name)


def test_sign_refuses_bad_text() -> None:
    with pytest.raises(NoteError, match="newline"):
        sign_note("no final newline", PETER)
    with pytest.raises(NoteError, match="control"):
        sign_note("a\rb\n", PETER)
    with pytest.raises(NoteError):
        sign_note(TEXT)


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a3",
        "PeterNeumann",
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # uppercase
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
        "PeterNeumanm+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # other name
        "PeterNeumann+c74f20a3+" + _b64(bytes([2]) + PETER_PUBLIC_KEY),  # not Ed25519
        "PeterNeumann+c74f20a3+" + _b64(bytes([1]) + PETER_PUBLIC_KEY[:31]),  # short
        "PeterNeumann+c74f20a3+" + _b64(bytes([1]) + PETER_PUBLIC_KEY + bytes(1)),  # long
        "PeterNeumann+c74f20a3+" + _b64(PETER_PUBLIC_KEY),  # no type byte
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW=",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        PETER_SKEY,
    ],
)
def test_malformed_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(NoteError):
        Verifier.from_vkey(vkey)


@pytest.mark.parametrize(
    "skey",
    [
        PETER_VKEY,
        "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumanm+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AoEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumann+c74f20a3",
        "private+key+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
    ],
)
def test_malformed_signer_keys_are_refused(skey: str) -> None:
    with pytest.raises(NoteError):
        Signer.from_skey(skey)


# --- checkpoints -------------------------------------------------------------------------

ROOT = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")


def test_checkpoint_text_format() -> None:
    checkpoint = Checkpoint("kuadeploy/bruno", 8, ROOT)
    assert checkpoint.text == ("kuadeploy/bruno\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n")
    assert Checkpoint.parse(checkpoint.text) == checkpoint
    empty = Checkpoint("kuadeploy/bruno", 0, EMPTY_ROOT)
    assert empty.text.splitlines()[1] == "0"
    extended = Checkpoint("o", 1, ROOT, ("Timestamp: 1", "— not a signature"))
    assert Checkpoint.parse(extended.text) == extended


def test_c2sp_example_checkpoint_parses() -> None:
    checkpoint = Checkpoint.parse(C2SP_CHECKPOINT_TEXT)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint.extensions == ()
    assert checkpoint.text == C2SP_CHECKPOINT_TEXT


def test_signed_checkpoint_round_trip() -> None:
    signer = Signer.generate("kuadeploy/bruno")
    checkpoint = Checkpoint("kuadeploy/bruno", 1_000_000, ROOT)
    note = sign_checkpoint(checkpoint, signer)
    assert note.startswith(checkpoint.text + "\n— kuadeploy/bruno ")
    verifier = Verifier.from_vkey(signer.vkey)
    assert open_checkpoint(note, [verifier]) == checkpoint
    assert open_checkpoint(note.encode(), [verifier], origin="kuadeploy/bruno") == checkpoint
    with pytest.raises(VerificationError, match="not 'kuadeploy/other'"):
        open_checkpoint(note, [verifier], origin="kuadeploy/other")


def test_checkpoint_signed_by_another_key_is_rejected() -> None:
    ours, theirs = Signer.generate("kuadeploy/bruno"), Signer.generate("kuadeploy/bruno")
    note = sign_checkpoint(Checkpoint("kuadeploy/bruno", 5, ROOT), theirs)
    with pytest.raises(VerificationError):
        open_checkpoint(note, [ours.verifier])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("\n1000000\n", "\n1000001\n"),  # a longer tree
        ("\n1000000\n", "\n999999\n"),  # a truncated tree
        ("kuadeploy/bruno\n", "kuadeploy/brunO\n"),  # another log
        ("XcnaeacG", "XcnaeacH"),  # another root
        ("=\n\n", "=\nextra\n\n"),  # an added extension line
    ],
)
def test_checkpoint_with_changed_text_is_rejected(old: str, new: str) -> None:
    signer = Signer.generate("kuadeploy/bruno")
    note = sign_checkpoint(Checkpoint("kuadeploy/bruno", 1_000_000, ROOT), signer)
    assert old in note
    with pytest.raises(VerificationError):
        open_checkpoint(note.replace(old, new, 1), [signer.verifier])


ROOT_B64 = base64.b64encode(ROOT).decode()
URL_SAFE_ROOT_B64 = base64.urlsafe_b64encode(bytes([0xFF] * 32)).decode()


@pytest.mark.parametrize(
    "text",
    [
        f"o\n8\n{ROOT_B64}",  # no final newline
        "o\n8\n",  # no root
        f"\n8\n{ROOT_B64}\n",  # empty origin
        f"o\n08\n{ROOT_B64}\n",  # leading zero
        f"o\n+8\n{ROOT_B64}\n",
        f"o\n-8\n{ROOT_B64}\n",
        f"o\n 8\n{ROOT_B64}\n",
        f"o\n8 \n{ROOT_B64}\n",
        f"o\n8.0\n{ROOT_B64}\n",
        f"o\n0x8\n{ROOT_B64}\n",
        f"o\n\uff18\n{ROOT_B64}\n",  # FULLWIDTH DIGIT EIGHT: a digit to int(), not ASCII
        f"o\n\n{ROOT_B64}\n",
        f"o\n18446744073709551616\n{ROOT_B64}\n",  # 2**64
        f"o\n8\n{ROOT_B64[:-1]}\n",  # no padding
        f"o\n8\n{base64.b64encode(ROOT[:31]).decode()}\n",  # 31 bytes
        f"o\n8\n{base64.b64encode(ROOT + b'x').decode()}\n",  # 33 bytes
        f"o\n8\n{ROOT.hex()}\n",  # hex, not base64
        f"o\n8\n{URL_SAFE_ROOT_B64}\n",  # URL-safe alphabet
        f"o\n8\n{ROOT_B64}\n\n",  # empty extension line
        f"o\n8\n{ROOT_B64}\next\n\n",
        f"o\r\n8\n{ROOT_B64}\n",
    ],
)
def test_malformed_checkpoints_are_rejected(text: str) -> None:
    with pytest.raises(NoteError):
        Checkpoint.parse(text)


def test_checkpoint_values_are_checked() -> None:
    with pytest.raises(NoteError):
        Checkpoint("", 1, ROOT)
    with pytest.raises(NoteError):
        Checkpoint("a\nb", 1, ROOT)
    with pytest.raises(NoteError):
        Checkpoint("o", -1, ROOT)
    with pytest.raises(NoteError):
        Checkpoint("o", 1, ROOT[:31])
    with pytest.raises(NoteError):
        Checkpoint("o", 1, ROOT, ("",))
    assert Checkpoint.parse(f"o\n18446744073709551615\n{ROOT_B64}\n").size == 2**64 - 1
