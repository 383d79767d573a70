"""JSON documents: Merge Patch (RFC 7396) and a diff as JSON Patch operations (RFC 6902)."""

from __future__ import annotations

from typing import Any

import msgspec

# What decoding untrusted JSON bytes raises: not JSON, not UTF-8 (msgspec lets some
# through as UnicodeDecodeError), or nested past the interpreter's recursion limit.
MALFORMED_JSON = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 §2: apply `patch` to `target`, returning a new document."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def pointer(path: list[str]) -> str:
    """RFC 6901 JSON Pointer: `~` -> `~0`, `/` -> `~1`."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def diff(before: Any, after: Any, path: list[str] | None = None) -> list[dict]:
    """RFC 6902 operations turning `before` into `after`: add/remove/replace,
    recursing into objects; arrays and scalars are replaced whole."""
    path = path or []
    if before == after and type(before) is type(after):
        return []
    if before is None and not path:
        return [{"op": "add", "path": "", "value": after}]
    if after is None and not path:
        return [{"op": "remove", "path": ""}]
    if isinstance(before, dict) and isinstance(after, dict):
        ops: list[dict] = []
        for key in before:
            if key not in after:
                ops.append({"op": "remove", "path": pointer([*path, key])})
        for key, value in after.items():
            if key not in before:
                ops.append({"op": "add", "path": pointer([*path, key]), "value": value})
            else:
                ops.extend(diff(before[key], value, [*path, key]))
        return ops
    return [{"op": "replace", "path": pointer(path), "value": after}]
