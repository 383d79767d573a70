"""The registry entry (DESIGN §5): the schema is the validation.

Entries are immutable values (gc=False: they never form reference cycles).

Every field has the default a user would expect, so an event's `data.entry`
always carries the complete, explicit entry and a third party can fold the
registry without knowing our defaults.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class SecretRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """An env value resolved at deploy time; only the name ever enters the ledger."""

    secret: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class Container(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    name: str | None = None
    env: dict[str, str | SecretRef] = {}
    ports: list[str] = []
    volumes: list[str] = []
    network_mode: str = "host"
    command: list[str] | None = None
    restart: Literal["no", "always", "unless-stopped", "on-failure"] = "unless-stopped"


class Verify(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    health_url: str | None = None
    expect_sha_in_body: bool = False
    timeout_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 60.0
    stable_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 5.0


class Migrations(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    paths: list[str] = []
    command: list[str] | None = None
    approval: Literal["required", "auto"] = "required"


class AppEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    server: NonEmpty
    repo: NonEmpty
    branch: NonEmpty
    forge_repo: str | None = None
    dockerfile: str = "Dockerfile"
    context: str = "."
    # `docker build --build-arg`s, e.g. a local BASE_IMAGE on a host without a registry.
    # Plain values, visible in the image's history: never a secret. GIT_SHA is set by us.
    build_args: dict[str, str] = {}
    container: Container = Container()
    verify: Verify = Verify()
    migrations: Migrations = Migrations()
    mode: Literal["direct", "self"] = "direct"
    keep_releases: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5


def container_name(app: str, entry: AppEntry) -> str:
    """The app's container on its server: `container.name`, else the app's name."""
    return entry.container.name or app


def entry_to_builtins(entry: AppEntry) -> dict:
    return msgspec.to_builtins(entry)


def entry_from_builtins(obj: object) -> AppEntry:
    """Raises msgspec.ValidationError with the JSON path of the first problem."""
    return msgspec.convert(obj, AppEntry)
