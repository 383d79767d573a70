"""What Forgejo and Gitea send (modules/structs/hook.go): the schema is the validation.

Only the fields we use are declared; the forge sends many more and msgspec skips
them. Git object ids are 40 hex digits (SHA-1 repositories) or 64 (SHA-256).
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from kuadeploy.jsondoc import MALFORMED_JSON

OBJECT_ID = r"^[0-9a-fA-F]{40}([0-9a-fA-F]{24})?$"
ObjectId = Annotated[str, msgspec.Meta(pattern=OBJECT_ID)]
_ZERO = re.compile(r"^0+$")


def is_zero(object_id: str) -> bool:
    """The all-zero id: no commit (a new branch's `before`, a deleted branch's `after`)."""
    return bool(_ZERO.fullmatch(object_id))


class Repository(msgspec.Struct, frozen=True):
    full_name: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    clone_url: str = ""
    ssh_url: str = ""
    html_url: str = ""
    default_branch: str = ""
    object_format_name: str = ""


class User(msgspec.Struct, frozen=True):
    login: str = ""
    username: str = ""  # Forgejo's compatibility copy of login

    @property
    def name(self) -> str | None:
        return self.login or self.username or None


class PushPayload(msgspec.Struct, frozen=True):
    """X-Forgejo-Event: push. `commits` is newest first and capped by the forge, so the
    only trustworthy statement of what was pushed is `after`."""

    ref: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    before: ObjectId
    after: ObjectId
    repository: Repository
    compare_url: str = ""
    total_commits: int = 0
    pusher: User | None = None
    sender: User | None = None

    @property
    def who(self) -> str | None:
        return (self.pusher and self.pusher.name) or (self.sender and self.sender.name)


class OtherPayload(msgspec.Struct, frozen=True):
    """Any other event (create, delete, release, …): recorded, never acted on. `ref` and
    `ref_type` are set for create and delete."""

    repository: Repository | None = None
    ref: str | None = None
    ref_type: str | None = None
    sender: User | None = None


class _Name(msgspec.Struct):
    full_name: str | None = None


class _RepoOnly(msgspec.Struct):
    """The one field needed before the signature is checked: which repo's secret to try."""

    repository: _Name | None = None


_repo_only = msgspec.json.Decoder(_RepoOnly)
_push = msgspec.json.Decoder(PushPayload)
_other = msgspec.json.Decoder(OtherPayload)


def claimed_repo(text: bytes) -> str | None:
    """repository.full_name as claimed by an unverified body; None if it cannot be read."""
    try:
        found = _repo_only.decode(text).repository
    except (*MALFORMED_JSON, msgspec.ValidationError):
        return None
    return found.full_name if found else None


def parse(event: str, text: bytes) -> PushPayload | OtherPayload:
    """Raises msgspec.DecodeError (not JSON) or msgspec.ValidationError (wrong shape)."""
    return _push.decode(text) if event == "push" else _other.decode(text)
