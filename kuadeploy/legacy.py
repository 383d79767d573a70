"""One-time import of a legacy registry file into an empty ledger, as one atomic batch."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from kuadeploy import events as ev
from kuadeploy.commands.registry import container_taken
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
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:  # or too deep
        raise LegacyImportError(f"{path}: not valid JSON: {exc}") from exc
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
