"""`kuadeploy history` as a table: one line per change, what changed in a few words.

Works on the API's JSON shape (seq, ts, actor, type, before, after), so the offline
and the client command print the same thing.
"""

from __future__ import annotations

from typing import Any

from kuadeploy.jsondoc import diff

_SHORT = 40  # a scalar shorter than this is shown with its old and new value


def summarize(before: Any, after: Any) -> str:
    if before is None and after is None:
        return "-"
    if before is None:
        return f"created (server {after.get('server')}, branch {after.get('branch')})"
    if after is None:
        return "removed"
    parts = [_describe(op, before) for op in diff(before, after)]
    return ", ".join(parts) or "no change"


def _describe(op: dict[str, Any], before: Any) -> str:
    path = op["path"]
    if op["op"] == "add":
        return f"+{path}"
    if op["op"] == "remove":
        return f"-{path}"
    old, new = _lookup(before, path), op["value"]
    if _short(old) and _short(new):
        return f"{path}: {_show(old)} → {_show(new)}"
    return f"~{path}"


def _lookup(doc: Any, path: str) -> Any:
    for token in path.split("/")[1:]:
        key = token.replace("~1", "/").replace("~0", "~")
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def _short(value: Any) -> bool:
    return not isinstance(value, dict | list) and len(_show(value)) <= _SHORT


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(changes: list[dict[str, Any]]) -> str:
    header = ("SEQ", "TIME", "ACTOR", "TYPE", "CHANGE")
    rows = [
        (
            str(c["seq"]),
            c["ts"][:19].replace("T", " ") + "Z",
            c["actor"],
            c["type"],
            summarize(c.get("before"), c.get("after")),
        )
        for c in changes
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].rjust(widths[0])] + [
            v.ljust(w) for v, w in zip(row[1:4], widths[1:], strict=True)
        ]
        lines.append("  ".join([*cells, row[4]]))
    return "\n".join(lines) + "\n"
