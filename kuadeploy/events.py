"""Event types (DESIGN §3): one msgspec Struct per type, and the stored envelope.

A stored body is the canonical JSON of an envelope
`{actor, data, seq, stream, ts, type, version}`. For every data Struct we derive
an envelope Struct tagged with the type name, so one msgspec decoder over the
tagged union checks the whole body against the typed schema in a single pass.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Union

import msgspec

from kuadeploy.entry import AppEntry

Step = Literal["fetch", "migration_gate", "build", "migrate", "recreate", "verify", "rollback"]


# gc=False: events are immutable values that never form reference cycles; keeping
# them out of the cycle collector makes folding a million of them ~2x faster.
class EventData(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """Base of every event payload. The class name is the event type."""

    Recorded: ClassVar[type]  # the envelope type for this payload, set below


# --- registry (stream app/<name>, system) ----------------------------------------


class AppRegistered(EventData, frozen=True):
    app: str
    entry: AppEntry


class AppReplaced(EventData, frozen=True):
    app: str
    entry: AppEntry


class AppPatched(EventData, frozen=True):
    app: str
    entry: AppEntry
    patch: dict[str, Any]


class AppRemoved(EventData, frozen=True):
    app: str


class LegacyRegistryImported(EventData, frozen=True):
    path: str
    sha256: str
    apps: list[str]


# --- deploys (stream deploy/<id>); every payload names its app -------------------


class DeployRequested(EventData, frozen=True):
    app: str
    trigger: str  # api | webhook | rollback | cli | …
    sha: str | None = None  # None: the branch head at fetch time
    ref: str | None = None
    force: bool = False
    image_id: str | None = None  # set for a rollback: start this image, no rebuild
    delivery: str | None = None
    pusher: str | None = None


class DeployStarted(EventData, frozen=True):
    app: str
    sha: str | None = None


class StepStarted(EventData, frozen=True):
    app: str
    step: Step


class StepSucceeded(EventData, frozen=True):
    app: str
    step: Step
    detail: dict[str, Any] = {}


class StepFailed(EventData, frozen=True):
    app: str
    step: Step
    error: str
    detail: dict[str, Any] = {}


class MigrationGateHeld(EventData, frozen=True):
    app: str
    paths: list[str]
    expires_at: str


class MigrationApproved(EventData, frozen=True):
    app: str


class DeploySucceeded(EventData, frozen=True):
    app: str
    sha: str
    image_id: str
    container_id: str | None = None


class DeployFailed(EventData, frozen=True):
    app: str
    reason: str
    step: Step | None = None


class RollbackStarted(EventData, frozen=True):
    app: str
    sha: str | None = None
    image_id: str | None = None


class RolledBack(EventData, frozen=True):
    """`sha` None: there was no earlier release, the app was left stopped."""

    app: str
    sha: str | None = None
    image_id: str | None = None
    verified: bool = False
    detail: str = ""


class DeployCancelled(EventData, frozen=True):
    app: str
    reason: str = ""


class DeploySuperseded(EventData, frozen=True):
    app: str
    by: str


class DeployInterrupted(EventData, frozen=True):
    app: str
    reason: str = ""


class SelfHandoffStarted(EventData, frozen=True):
    """A self-deploy (`mode: "self"`) handing over to a transient container.

    Written by the running instance before the transient container starts; the
    transient, the new instance and a restored old instance all read it back from
    the ledger. The deploy stays running until an instance that started after it
    records the outcome: only the new instance, on its own baked GIT_SHA and
    image, records success.
    """

    app: str
    server: str
    container: str  # the orchestrator container's name, kept by the new one
    container_id: str  # the running (old) container
    sha: str  # target
    image_id: str  # target image, built by this deploy
    previous_sha: str  # what runs now: the old instance's GIT_SHA …
    previous_image_id: str  # … and its container's image
    transient: str  # name of the transient container
    health_url: str
    timeout_s: float
    stable_s: float
    stop_timeout_s: int


# --- webhooks (stream webhook/<delivery>): one event per verified delivery -------------
# Unverified deliveries are never recorded (strangers must not be able to grow the
# ledger); every verified one is, with what was done about it.


class WebhookSkip(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """Why (part of) a delivery was not acted on; `app` None: the whole delivery."""

    reason: str
    app: str | None = None
    deploy_id: str | None = None  # the deploy that already covers this SHA, if any


class WebhookDelivery(EventData, frozen=True):
    delivery: str  # the forge's delivery UUID (also the stream name)
    event: str  # X-Forgejo-Event / X-Gitea-Event: push, create, delete, release, …
    forge: str  # forgejo | gitea: which header family carried the event
    signed_with: str  # repo | default: which configured secret verified the signature
    repo: str | None = None  # repository.full_name
    ref: str | None = None
    before: str | None = None
    after: str | None = None
    pusher: str | None = None
    deploy_ids: list[str] = []
    ignored: list[WebhookSkip] = []


class WebhookReceived(WebhookDelivery, frozen=True):
    """A verified delivery that requested at least one deploy (in the same append)."""


class WebhookIgnored(WebhookDelivery, frozen=True):
    """A verified delivery that requested nothing; `ignored` says why."""


# --- audit (stream system) ---------------------------------------------------------


class CheckpointOverridden(EventData, frozen=True):
    """Start-up found the ledger shorter than, or inconsistent with, the last signed
    checkpoint, or its hash chain broken, and an operator accepted it explicitly.
    old_*: the refused checkpoint (None when its file could not be read as one);
    new_*: the ledger as accepted, before this event. Roots are lowercase hex.
    chain_breaks: the seqs of chain breaks accepted here (hash mismatches, type or
    ts columns that differ from the body); later start-ups accept the chain broken
    at exactly those seqs."""

    reason: str
    old_size: int | None
    old_root: str | None
    new_size: int
    new_root: str
    chain_breaks: list[int] = []


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", gc=False):
    """A stored event. `data` is narrowed to one payload type by each subclass."""

    seq: int
    ts: str
    stream: str
    version: int
    actor: str
    data: Any

    @property
    def type(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]


EVENT_TYPES: dict[str, type[EventData]] = {}


class _DecoderCache:
    def __init__(self) -> None:
        self._decoder: msgspec.json.Decoder | None = None

    def __call__(self) -> msgspec.json.Decoder:
        if self._decoder is None:
            union = Union[tuple(c.Recorded for c in EVENT_TYPES.values())]  # noqa: UP007
            self._decoder = msgspec.json.Decoder(union)
        return self._decoder

    def cache_clear(self) -> None:
        self._decoder = None


_decoder = _DecoderCache()


def register(cls: type[EventData]) -> type[EventData]:
    """Give `cls` its envelope type and add it to the decodable union."""
    name = cls.__name__
    cls.Recorded = msgspec.defstruct(
        name + "Recorded",
        [("data", cls)],
        bases=(Envelope,),
        tag=name,
        frozen=True,
        forbid_unknown_fields=True,
        module=__name__,
    )
    EVENT_TYPES[name] = cls
    _decoder.cache_clear()
    return cls


for _cls in (
    AppRegistered,
    AppReplaced,
    AppPatched,
    AppRemoved,
    LegacyRegistryImported,
    DeployRequested,
    DeployStarted,
    StepStarted,
    StepSucceeded,
    StepFailed,
    MigrationGateHeld,
    MigrationApproved,
    DeploySucceeded,
    DeployFailed,
    RollbackStarted,
    RolledBack,
    DeployCancelled,
    DeploySuperseded,
    DeployInterrupted,
    SelfHandoffStarted,
    WebhookReceived,
    WebhookIgnored,
    CheckpointOverridden,
):
    register(_cls)


_encoder = msgspec.json.Encoder(order="sorted")


def decode(body: bytes) -> Envelope:
    """Decode a stored body with the typed schema; raises msgspec.ValidationError/DecodeError."""
    return _decoder().decode(body)


def decoder() -> msgspec.json.Decoder:
    """The typed decoder itself, for loops over many bodies."""
    return _decoder()


def encode(envelope: Envelope) -> bytes:
    """Canonical JSON: UTF-8, keys sorted at every level, no insignificant whitespace."""
    return _encoder.encode(envelope)


def envelope(
    data: EventData, *, seq: int, ts: str, stream: str, version: int, actor: str
) -> Envelope:
    return type(data).Recorded(
        seq=seq, ts=ts, stream=stream, version=version, actor=actor, data=data
    )
