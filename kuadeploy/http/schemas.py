"""Shapes of the API's requests and answers as msgspec Structs (DESIGN §4).

They are the source of the OpenAPI schemas (`kuadeploy.http.openapi`). Shapes
whose routes exist are exact (unknown fields are not allowed, so the schemathesis
test catches any drift); shapes of routes still to be built name only what DESIGN §4
promises and leave room for more.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from kuadeploy.entry import AppEntry
from kuadeploy.events import EVENT_TYPES
from kuadeploy.validation import Problem as EntryProblem
from projections.history import Change
from projections.runtime import Release

HexHash = Annotated[
    str, msgspec.Meta(pattern="^[0-9a-f]{64}$", description="SHA-256, lowercase hex")
]
Seq = Annotated[int, msgspec.Meta(ge=0, description="a position in the ledger (0: empty)")]
StoredBody = Annotated[
    str,
    msgspec.Meta(
        description="the exact stored body text: the bytes that were hashed",
        extra_json_schema={
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/StoredEvent"},
        },
    ),
]
Timestamp = Annotated[str, msgspec.Meta(description="RFC 3339 UTC time with microseconds and Z")]


class Exact(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """An answer whose fields are all known: anything else is a bug."""


class Open(msgspec.Struct, omit_defaults=True):
    """An answer of a route still to be built: these fields at least."""


# --- errors ---------------------------------------------------------------------------


class ProblemDetails(Exact):
    """RFC 9457 problem details (`application/problem+json`)."""

    type: str
    title: str
    status: Annotated[int, msgspec.Meta(ge=400, le=599)]
    detail: str
    errors: list[EntryProblem] | UnsetType = UNSET


# --- health ---------------------------------------------------------------------------


class Health(msgspec.Struct):
    """Also carries problems that do not stop the service (a failing export sink…)."""

    status: Literal["ok"]
    version: str
    git_sha: str
    head_seq: Seq


# --- registry -------------------------------------------------------------------------


class App(Exact):
    app: str
    entry: AppEntry
    version: Annotated[int, msgspec.Meta(ge=1)]


class AppList(Exact):
    apps: list[App]


class Changed(Exact):
    """A registry change as written; `unchanged` when the entry already had this content
    (nothing appended), `removed` after DELETE. `seq` is the ledger position written."""

    app: str
    version: int
    entry: AppEntry | UnsetType = UNSET
    removed: Literal[True] | UnsetType = UNSET
    unchanged: Literal[True] | UnsetType = UNSET
    detail: str | UnsetType = UNSET
    seq: int | UnsetType = UNSET


class PatchOperation(Exact):
    """One RFC 6902 JSON Patch operation."""

    op: Literal["add", "remove", "replace", "move", "copy", "test"]
    path: str
    value: Any = UNSET
    from_: str | UnsetType = msgspec.field(default=UNSET, name="from")


class DryRun(Exact):
    """What the call would do; nothing was written."""

    dry_run: Literal[True]
    before: AppEntry | None
    after: AppEntry | None
    diff: list[PatchOperation]


class History(Exact):
    app: str
    changes: list[Change]


class AsOf(Exact):
    seq: Seq
    ts: Timestamp | None
    hash: HexHash


class Export(Exact):
    """The registry at one point of the ledger. `snapshot_path` with `?snapshot=1`."""

    as_of: AsOf
    apps: dict[str, AppEntry]
    versions: dict[str, int]
    snapshot_path: str | UnsetType = UNSET


# --- events and audit -----------------------------------------------------------------


def stored_event_types() -> tuple[type, ...]:
    """The stored envelope of every event type: what a ledger `body` decodes to."""
    return tuple(cls.Recorded for cls in EVENT_TYPES.values())


def api_event_types() -> tuple[type, ...]:
    """An event as the feed shows it: the stored envelope plus its chain hash and the
    exact stored body text."""
    return tuple(
        msgspec.defstruct(
            name + "Event",
            [("hash", HexHash), ("body", StoredBody)],
            bases=(cls.Recorded,),
            tag=name,
            frozen=True,
            forbid_unknown_fields=True,
            module=__name__,
        )
        for name, cls in EVENT_TYPES.items()
    )


class ChainHead(Exact):
    seq: Seq
    hash: HexHash


class VerifyReport(Exact):
    """`ok`: the chain verifies up to `head`; otherwise the first bad seq and why."""

    ok: bool
    events: int
    head: ChainHead
    first_bad_seq: int | UnsetType | None = UNSET
    reason: str | UnsetType | None = UNSET


class InclusionProof(Open):
    seq: int
    leaf_index: int
    tree_size: int
    root: HexHash
    hashes: list[HexHash]


class ConsistencyProof(Open):
    from_: int = msgspec.field(name="from")
    to: int
    hashes: list[HexHash]


# --- deploys (the views are the projections' own types) ------------------------------


class DeployAccepted(Exact):
    """202: queued (`superseded`: queued deploys of the app it replaces). 200 with `noop`:
    nothing to do, and why (e.g. that SHA is already deployed or queued)."""

    deploy_id: str
    superseded: list[str] | UnsetType = UNSET
    noop: Literal[True] | UnsetType = UNSET
    reason: str | UnsetType | None = UNSET


class ContainerState(Exact):
    id: str
    name: str
    running: bool
    status: str
    sha: str | None
    image_id: str
    restart_count: int
    started_at: str | None


class RuntimeStatus(Exact):
    """The last verified release, the live container, and whether they differ (`drift`;
    null with `engine_error` when the engine cannot be asked)."""

    app: str
    server: str
    release: Release | None
    releases: list[Release]
    container: ContainerState | None
    drift: bool | None
    engine_error: str | UnsetType = UNSET


class Ignored(Open):
    reason: str
    app: str | UnsetType = UNSET
    deploy_id: str | UnsetType = UNSET  # the deploy that already covers this SHA


class WebhookAnswer(Open):
    """202 with the deploys started; 200 with only `ignored` when nothing is deployed."""

    ignored: list[Ignored]
    deploy_ids: list[str] | UnsetType = UNSET
