"""Registry entry validation: every problem at once, from the msgspec schema plus DESIGN §5.

msgspec stops at the first error, so the entry's type info is walked field by
field and each field is converted on its own: the schema stays the single
source of truth, and a 422 can list every problem.
"""

from __future__ import annotations

import functools
import posixpath
import re
import typing
from collections.abc import Iterable
from typing import Any

import msgspec
from msgspec import inspect

from kuadeploy.adapters.docker_specs import BUILD_ARG_SHA, parse_port
from kuadeploy.entry import AppEntry

APP_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # env and build argument names
_HTTP_URL = re.compile(r"^https?://[^/\s]+(/\S*)?$")
_SHELL_META = set(" \t\n;&|$`<>()'\"\\!*?[]{}#")


class Problem(msgspec.Struct, frozen=True):
    path: str
    message: str


def check_app_name(name: str) -> list[Problem]:
    if APP_NAME.fullmatch(name):
        return []
    return [Problem("app", f"app name {name[:80]!r} must match {APP_NAME.pattern}")]


@functools.lru_cache(maxsize=4096)  # the same few names are checked on every change
def check_branch(branch: str) -> str | None:
    """`git check-ref-format --branch` rules, no leading '-', no shell metacharacters."""
    if len(branch) > 200:
        return "branch name longer than 200 characters"
    if not branch:
        return "branch name is empty"
    if branch.startswith("-"):
        return "branch name must not start with '-'"
    if any(c in _SHELL_META for c in branch) or any(ord(c) < 0x20 or c == "\x7f" for c in branch):
        return "branch name contains whitespace, control or shell characters"
    if ".." in branch or "@{" in branch or branch == "@" or "//" in branch:
        return "branch name contains '..', '@{', '//' or is '@'"
    if branch == "HEAD":  # git check-ref-format --branch refuses it: it names no branch
        return "branch name must not be 'HEAD'"
    if branch.startswith("/") or branch.endswith("/") or branch.endswith("."):
        return "branch name must not start or end with '/' or end with '.'"
    if any(c in branch for c in "~^:"):
        return "branch name contains '~', '^' or ':'"
    for part in branch.split("/"):
        if part.startswith(".") or part.endswith(".lock"):
            return "a branch name component starts with '.' or ends with '.lock'"
    return None


@functools.lru_cache(maxsize=4096)
def check_repo_path(path: str) -> str | None:
    """A path inside the repository: relative, no '..' escaping the root."""
    if not path or path.startswith("/") or "\x00" in path or "\\" in path:
        return "must be a relative path inside the repository"
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        return "must stay inside the repository"
    return None


def validate_entry(obj: Any, servers: set[str]) -> tuple[AppEntry | None, list[Problem]]:
    try:  # one pass in C for the usual, valid entry; the field walk only to list problems
        entry = msgspec.convert(obj, AppEntry)
    except msgspec.ValidationError:
        problems = _check_struct(obj, AppEntry, "$")
        if isinstance(obj, dict):
            problems += _check_rules(_document_values(obj), servers)
        return None, sorted(problems, key=lambda p: p.path)
    if problems := _check_rules(_entry_values(entry), servers):
        return None, sorted(problems, key=lambda p: p.path)
    return entry, []


def _check_struct(obj: Any, cls: type, path: str) -> list[Problem]:
    if not isinstance(obj, dict):
        return [Problem(path, f"expected an object, got {_json_type(obj)}")]
    fields = _fields(cls)
    problems = [Problem(f"{path}.{k}", "unknown field") for k in obj if k not in fields]
    for name, field in fields.items():
        here = f"{path}.{name}"
        if name not in obj:
            if field.required:
                problems.append(Problem(here, "required field is missing"))
            continue
        if isinstance(field.type, inspect.StructType):
            problems.extend(_check_struct(obj[name], field.type.cls, here))
            continue
        problems.extend(_check_value(obj[name], _python_type(cls, name), here))
    return problems


def _check_value(value: Any, tp: Any, path: str) -> list[Problem]:
    """Problems of one field's value. Item by item in a dict or list (env, volumes,
    build_args): msgspec would stop at the first bad one and call its key `[...]`."""
    origin = typing.get_origin(tp)
    if origin is dict and isinstance(value, dict):
        item = typing.get_args(tp)[1]
        return [p for k, v in value.items() for p in _check_value(v, item, f"{path}.{k}")]
    if origin is list and isinstance(value, list):
        item = typing.get_args(tp)[0]
        return [p for i, v in enumerate(value) for p in _check_value(v, item, f"{path}[{i}]")]
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$")
        return [Problem(path + where.rstrip("`"), message)]
    return []


@functools.cache
def _fields(cls: type) -> dict[str, inspect.Field]:
    info = inspect.type_info(cls)
    assert isinstance(info, inspect.StructType)
    return {f.encode_name: f for f in info.fields}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _python_type(cls: type, name: str) -> Any:
    return _hints(cls).get(name, Any)


# The values DESIGN §5's rules look at: server, branch, dockerfile, context, migration
# paths, build argument names, health URL, env names, ports. None (or empty) where a field is
# absent or of the wrong type: that is the schema's problem, listed on its own.
_Text = str | None
_Values = tuple[_Text, _Text, _Text, _Text, list, Iterable, _Text, Iterable, list]


def _entry_values(e: AppEntry) -> _Values:
    """A converted entry: every type is right already."""
    return (
        e.server,
        e.branch,
        e.dockerfile,
        e.context,
        e.migrations.paths,
        e.build_args,
        e.verify.health_url,
        e.container.env,
        e.container.ports,
    )


def _document_values(obj: dict) -> _Values:
    """The raw document of an entry that failed conversion."""

    def get(*keys: str) -> Any:
        value: Any = obj
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def text(*keys: str) -> str | None:
        value = get(*keys)
        return value if isinstance(value, str) else None

    def names(*keys: str) -> list:
        value = get(*keys)
        return list(value) if isinstance(value, dict) else []

    paths, ports = get("migrations", "paths"), get("container", "ports")
    return (
        text("server"),
        text("branch"),
        text("dockerfile"),
        text("context"),
        paths if isinstance(paths, list) else [],
        names("build_args"),
        text("verify", "health_url"),
        names("container", "env"),
        ports if isinstance(ports, list) else [],
    )


def _check_rules(values: _Values, servers: set[str]) -> list[Problem]:
    """DESIGN §5 rules, for every field whose type is right."""
    server, branch, dockerfile, context, migration_paths, build_args, health_url, env, ports = (
        values
    )
    problems = []
    if server is not None and server not in servers:
        known = ", ".join(sorted(servers)) or "none"
        problems.append(Problem("$.server", f"unknown server {server!r} (configured: {known})"))
    if branch is not None and (message := check_branch(branch)):
        problems.append(Problem("$.branch", message))
    if dockerfile is not None and (message := check_repo_path(dockerfile)):
        problems.append(Problem("$.dockerfile", message))
    if context is not None and (message := check_repo_path(context)):
        problems.append(Problem("$.context", message))
    for i, pattern in enumerate(migration_paths):
        if isinstance(pattern, str) and (message := check_repo_path(pattern)):
            problems.append(Problem(f"$.migrations.paths[{i}]", message))
    for key in build_args:
        if not _NAME.fullmatch(key):
            problems.append(Problem(f"$.build_args.{key}", "not a valid build argument name"))
        elif key == BUILD_ARG_SHA:
            problems.append(Problem(f"$.build_args.{key}", "set by kuadeploy to the deployed SHA"))
    if health_url is not None and not _HTTP_URL.fullmatch(health_url):
        problems.append(Problem("$.verify.health_url", "must be an http:// or https:// URL"))
    for key in env:
        if not _NAME.fullmatch(key):
            problems.append(Problem(f"$.container.env.{key}", "not a valid variable name"))
    for i, spec in enumerate(ports):  # as the deploy parses them: else it fails at recreate
        try:
            if isinstance(spec, str):
                parse_port(spec)
        except ValueError as exc:
            problems.append(Problem(f"$.container.ports[{i}]", str(exc)))
    return problems


def _json_type(obj: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(obj), "number"
    )
