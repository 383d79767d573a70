"""`kua.json`, an app's release manifest, turned into a registry entry (docs/kua-json.md).

Pure: reading the manifest (from a repository or a file) and registering the
entry are the caller's; the result is validated by the registry as any entry.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kuadeploy.jsondoc import MALFORMED_JSON, merge_patch
from kuadeploy.validation import APP_NAME

MANIFEST_FILE = "kua.json"


class ManifestError(ValueError):
    """The manifest is not one: a one-line reason."""


def parse_manifest(raw: bytes) -> dict[str, Any]:
    try:
        doc = msgspec.json.decode(raw)
    except MALFORMED_JSON as exc:
        raise ManifestError(f"{MANIFEST_FILE} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{MANIFEST_FILE} must be a JSON object")
    return doc


def manifest_to_entry(manifest: dict[str, Any], importer: dict[str, Any]) -> tuple[str, dict]:
    """(app name, entry document): drop `name`, move `health_url` into `verify`, then
    merge what the importer supplies (at least `repo`) as a JSON Merge Patch."""
    name = manifest.get("name")
    if not isinstance(name, str) or not APP_NAME.fullmatch(name):
        raise ManifestError(f"{MANIFEST_FILE}: name must match {APP_NAME.pattern}")
    entry = {k: v for k, v in manifest.items() if k not in ("name", "health_url")}
    if "health_url" in manifest:
        verify = manifest.get("verify", {})
        if not isinstance(verify, dict):
            raise ManifestError(f"{MANIFEST_FILE}: verify must be an object")
        if "health_url" in verify:
            raise ManifestError(f"{MANIFEST_FILE}: health_url given twice (and in verify)")
        entry["verify"] = {**verify, "health_url": manifest["health_url"]}
    return name, merge_patch(entry, importer)
