"""Registry commands: PUT (create/replace), PATCH (RFC 7396), DELETE, each with dry runs.

`decide_*` are pure: the current state and the request in, the events to append
and the answer out. `execute` is the shell: it decides against the live
projection and appends with the version it decided on as the expected stream
version, so check-then-append is atomic; a concurrent writer makes the append
fail, and then the decision is made again (or 412 when the client sent If-Match).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from kuadeploy import events as ev
from kuadeploy.entry import AppEntry, container_name, entry_to_builtins
from kuadeploy.errors import ApiError
from kuadeploy.jsondoc import diff, merge_patch
from kuadeploy.ledger import ConflictError, Ledger, NewEvent
from kuadeploy.validation import Problem, check_app_name, validate_entry
from projections.registry import AppState, Registry


class Preconditions(msgspec.Struct, frozen=True):
    if_match: str | None = None
    if_none_match: str | None = None


class Decision(msgspec.Struct):
    app: str
    change: str  # created | replaced | patched | removed | unchanged
    before: AppEntry | None
    after: AppEntry | None
    version: int  # the stream version the decision was made against
    events: list[ev.EventData] = []


class Outcome(msgspec.Struct):
    decision: Decision
    version: int
    seq: int | None = None

    def body(self) -> dict[str, Any]:
        d = self.decision
        out: dict[str, Any] = {"app": d.app, "version": self.version}
        if d.change == "removed":
            out["removed"] = True
        else:
            out["entry"] = d.after
        if d.change == "unchanged":
            out["unchanged"] = True
            out["detail"] = "the entry already has exactly this content; nothing was written"
        if self.seq is not None:
            out["seq"] = self.seq
        return out

    def dry_run_body(self) -> dict[str, Any]:
        d = self.decision
        before = entry_to_builtins(d.before) if d.before else None
        after = entry_to_builtins(d.after) if d.after else None
        return {"dry_run": True, "before": before, "after": after, "diff": diff(before, after)}


def decide_put(
    app: str,
    current: AppState | None,
    body: Any,
    servers: set[str],
    pre: Preconditions,
    apps: Mapping[str, AppState],
) -> Decision:
    if name_problems := check_app_name(app):  # listed with the entry's own problems
        raise ApiError.invalid([*name_problems, *validate_entry(body, servers)[1]])
    before = _check_target(app, current, pre)
    entry, problems = validate_entry(body, servers)
    if entry is not None:
        problems += container_taken(app, entry, before, apps)
    if problems:
        raise ApiError.invalid(problems)
    assert entry is not None
    version = current.version if current else 0
    if before == entry:  # Struct equality: field by field, in C
        return Decision(app, "unchanged", before, entry, version)
    if before is None:
        return Decision(app, "created", None, entry, version, [ev.AppRegistered(app, entry)])
    return Decision(app, "replaced", before, entry, version, [ev.AppReplaced(app, entry)])


def decide_patch(
    app: str,
    current: AppState | None,
    patch: Any,
    servers: set[str],
    pre: Preconditions,
    apps: Mapping[str, AppState],
) -> Decision:
    before = _check_target(app, current, pre)
    if before is None or current is None:
        raise ApiError.not_found(f"app {app!r} is not registered")
    if not isinstance(patch, dict):
        raise ApiError.invalid_one("$", "a merge patch for an entry must be a JSON object")
    entry, problems = validate_entry(merge_patch(entry_to_builtins(before), patch), servers)
    if entry is not None:
        problems += container_taken(app, entry, before, apps)
    if problems:
        raise ApiError.invalid(problems)
    assert entry is not None
    if before == entry:
        return Decision(app, "unchanged", before, entry, current.version)
    return Decision(
        app, "patched", before, entry, current.version, [ev.AppPatched(app, entry, patch)]
    )


def decide_delete(app: str, current: AppState | None, pre: Preconditions) -> Decision:
    before = _check_target(app, current, pre)
    if before is None or current is None:
        raise ApiError.not_found(f"app {app!r} is not registered")
    return Decision(app, "removed", before, None, current.version, [ev.AppRemoved(app)])


def container_taken(
    app: str, entry: AppEntry, before: AppEntry | None, apps: Mapping[str, AppState]
) -> list[Problem]:
    """Two apps on one server with one container name would replace each other's
    container on every deploy. Checked only when the entry's server or name changes
    (a PATCH of an env var costs nothing here)."""
    where = (entry.server, container_name(app, entry))
    if before is not None and (before.server, container_name(app, before)) == where:
        return []
    for other, state in apps.items():
        held = state.entry
        if other != app and held and (held.server, container_name(other, held)) == where:
            message = f"container {where[1]!r} on server {where[0]!r} belongs to app {other!r}"
            return [Problem("$.container.name", message)]
    return []


def _check_target(app: str, current: AppState | None, pre: Preconditions) -> AppEntry | None:
    if problems := check_app_name(app):
        raise ApiError.invalid(problems)
    exists = current is not None and current.entry is not None
    version = current.version if current and exists else None
    if pre.if_none_match is not None and etag_matches(pre.if_none_match, version, weak=True):
        raise ApiError.precondition(f"app {app!r} matches If-None-Match {pre.if_none_match}")
    if pre.if_match is not None and not etag_matches(pre.if_match, version):
        have = f'"{version}"' if version is not None else "no entry"
        raise ApiError.precondition(f"If-Match {pre.if_match} does not match ({have})")
    return current.entry if current else None


def etag(version: int) -> str:
    return f'"{version}"'


def etag_matches(header: str, version: int | None, weak: bool = False) -> bool:
    """RFC 9110 §13.1: `*` matches any current entry, else one of the listed tags.
    If-Match compares strongly (a weak tag, `W/"3"`, never matches), If-None-Match
    weakly (`weak`)."""
    if version is None:
        return False
    for tag in (t.strip() for t in header.split(",")):
        if tag == "*":
            return True
        if tag.startswith("W/") and not weak:
            continue
        if tag.removeprefix("W/").strip('"') == str(version):
            return True
    return False


async def execute(
    ledger: Ledger,
    registry: Registry,
    app: str,
    decide: Callable[[AppState | None], Decision],
    *,
    actor: str,
    dry_run: bool,
    strict: bool,
) -> Outcome:
    """Decide against the live registry and append atomically. `strict`: the client
    sent If-Match, so a concurrent change is its 412, not a retry."""
    for _ in range(50):
        decision = decide(registry.apps.get(app))
        if dry_run or not decision.events:
            return Outcome(decision, decision.version)
        items = [NewEvent(f"app/{app}", e, decision.version) for e in decision.events]
        try:
            stored = await ledger.append(items, actor=actor)
        except ConflictError as exc:
            if strict:
                raise ApiError.precondition(
                    f"app {app!r} changed concurrently (now version {exc.actual})"
                ) from exc
            continue
        last = stored[-1]
        return Outcome(decision, last.event.version, last.seq)
    raise ApiError(503, "Busy", f"app {app!r} keeps changing concurrently; try again")
