"""`migrations.paths` patterns: `**` crosses directories, `*` and `?` stay within one."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable


@functools.cache
def _compile(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matching(paths: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The paths that match any pattern; a pattern naming a directory matches below it."""
    compiled = [_compile(p.rstrip("/")) for p in patterns]
    prefixes = [p.rstrip("/") + "/" for p in patterns if not any(c in p for c in "*?")]
    return [
        path
        for path in paths
        if any(c.match(path) for c in compiled) or any(path.startswith(p) for p in prefixes)
    ]
