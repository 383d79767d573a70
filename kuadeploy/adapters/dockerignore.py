""".dockerignore, as the docker CLI applies it before it sends a build context.

The engine does not filter the context itself: a client that tars a directory
must. Without this, `COPY . /src` would copy what the app excludes (tests,
wheelhouses, secrets kept out on purpose) and no layer would match one built
with `docker build`. Semantics follow moby's patternmatcher: patterns are
cleaned and relative to the context root, `*`/`?` stay within one path
element, `**` crosses any number, a pattern that matches a parent directory
matches everything below it, `!` re-includes, and the last matching pattern
wins. The Dockerfile and .dockerignore are always sent, as the CLI does.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path

import msgspec


class Pattern(msgspec.Struct, frozen=True):
    text: str  # cleaned, without the leading "!"
    exclusion: bool  # "!pattern": re-include what matched earlier patterns
    regex: re.Pattern[str]


def parse(text: str) -> list[Pattern]:
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        if not line:
            continue
        line = posixpath.normpath(line)
        if len(line) > 1 and line.startswith("/"):
            line = line.lstrip("/") or "."
        patterns.append(Pattern(line, exclusion, _compile(line)))
    return patterns


def _compile(pattern: str) -> re.Pattern[str]:
    out, i = ["^"], 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1  # "**/" is "**"
            out.append(".*" if i >= len(pattern) else "(.*/)?")
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":  # a character class, as in Go's filepath.Match
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                body = "^" + body[1:] if body.startswith("^") else body
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + "$")


def excluded(path: str, patterns: list[Pattern]) -> bool:
    """Whether `path` (relative, '/'-separated) stays out of the context."""
    parents = path.split("/")[:-1]
    matched = False
    for pattern in patterns:
        if pattern.exclusion != matched:
            continue  # cannot change the verdict
        hit = bool(pattern.regex.match(path)) or any(
            pattern.regex.match("/".join(parents[: i + 1])) for i in range(len(parents))
        )
        if hit:
            matched = not pattern.exclusion
    return matched


def _may_reinclude_below(directory: str, patterns: list[Pattern]) -> bool:
    prefix = directory + "/"
    return any(p.exclusion and (p.text + "/").startswith(prefix) for p in patterns)


def context_paths(root: Path, dockerfile: str = "Dockerfile") -> Iterator[str]:
    """Relative paths to send (directories before what they hold), sorted."""
    ignore = root / ".dockerignore"
    patterns = parse(ignore.read_text(errors="replace")) if ignore.is_file() else []
    always = {posixpath.normpath(dockerfile), ".dockerignore"}

    def walk(rel_dir: str) -> Iterator[str]:
        with os.scandir(root / rel_dir if rel_dir else root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if rel in always or not excluded(rel, patterns):
                yield rel
                if is_dir:
                    yield from walk(rel)
            elif is_dir and _may_reinclude_below(rel, patterns):
                yield from walk(rel)  # the directory itself stays out, as with the CLI

    yield from walk("")
