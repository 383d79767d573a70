"""Registry: app name -> current entry and the version of its `app/<name>` stream."""

from __future__ import annotations

import msgspec

from kuadeploy.entry import AppEntry
from kuadeploy.events import AppPatched, AppRegistered, AppRemoved, AppReplaced, Envelope

REGISTRY_EVENT_TYPES = ("AppRegistered", "AppReplaced", "AppPatched", "AppRemoved")


class AppState(msgspec.Struct):
    entry: AppEntry | None  # None: removed; the version still counts for ETags
    version: int


class Registry(msgspec.Struct):
    apps: dict[str, AppState] = {}


def fold_registry(state: Registry, ev: Envelope) -> Registry:
    step = _STEPS.get(type(ev.data))
    if step is not None:
        step(state, ev)
    return state


def _put(state: Registry, ev: Envelope) -> None:
    state.apps[ev.data.app] = AppState(ev.data.entry, ev.version)


def _remove(state: Registry, ev: Envelope) -> None:
    state.apps[ev.data.app] = AppState(None, ev.version)


# Dispatch on the payload type: one dict lookup per event instead of isinstance chains.
_STEPS = {AppRegistered: _put, AppReplaced: _put, AppPatched: _put, AppRemoved: _remove}
FOLDED = frozenset(_STEPS)  # the payload types fold_registry reacts to


def live_entries(state: Registry) -> dict[str, AppEntry]:
    return {name: s.entry for name, s in sorted(state.apps.items()) if s.entry is not None}


def live_versions(state: Registry) -> dict[str, int]:
    return {name: s.version for name, s in sorted(state.apps.items()) if s.entry is not None}
