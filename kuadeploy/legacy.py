"""One-time import of a legacy registry file into an empty ledger, as one atomic batch."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import msgspec

from kuadeploy import events as ev
from kuadeploy.commands.registry import container_taken
from kuadeploy.jsondoc import MALFORMED_JSON
from kuadeploy.ledger import NewEvent
from kuadeploy.validation import check_app_name, validate_entry
from projections.registry import AppState


class LegacyImportError(Exception):
    pass


def plan_legacy_import(raw: bytes, path: str, servers: set[str]) -> list[NewEvent]:
    """Events that seed the registry from `raw` (`{"apps": {name: entry}}` or `{name: entry}`).
    Every invalid entry is listed in one error: never a half-seeded registry."""
    try:
        doc: Any = msgspec.json.decode(raw)
    except MALFORMED_JSON as exc:
        raise LegacyImportError(f"{path}: not valid JSON: {exc}") from exc
    if duplicates := _duplicate_keys(raw):  # a JSON decoder keeps the last one silently
        raise LegacyImportError(f"{path}: duplicate keys, nothing imported: {duplicates}")
    if isinstance(doc, dict) and isinstance(doc.get("apps"), dict):
        doc = doc["apps"]
    if not isinstance(doc, dict):
        raise LegacyImportError(f'{path}: expected {{"apps": {{name: entry}}}} or {{name: entry}}')
    problems, items, seen = [], [], {}
    for name in sorted(doc):
        entry, entry_problems = validate_entry(doc[name], servers)
        entry_problems = check_app_name(name) + entry_problems
        if entry is not None:
            entry_problems += container_taken(name, entry, None, seen)
            seen[name] = AppState(entry, 1)
        problems += [f"{name}: {p.path} {p.message}" for p in entry_problems]
        if entry is not None and not entry_problems:
            items.append(NewEvent(f"app/{name}", ev.AppRegistered(name, entry), 0))
    if problems:
        listing = "\n  ".join(problems)
        raise LegacyImportError(
            f"{path}: {len(problems)} problem(s), nothing imported:\n  {listing}"
        )
    digest = hashlib.sha256(raw).hexdigest()
    marker = ev.LegacyRegistryImported(path=path, sha256=digest, apps=sorted(doc))
    return [NewEvent("system", marker), *items]


def _duplicate_keys(raw: bytes) -> str:
    """Keys an object of the document has twice, e.g. `web` (the first one would be
    lost: an app missing or the wrong entry, with no word said)."""
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        counts = Counter(k for k, _ in items)
        found.extend(sorted(k for k, n in counts.items() if n > 1))
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)  # valid JSON already: msgspec read it
    except RecursionError:  # deeper than any entry may be: validation says so
        return ""
    return ", ".join(repr(k) for k in found)
