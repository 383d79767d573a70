"""Secret references in env values, resolved at deploy time by the configured provider.

Values only ever live in memory on their way into a container's environment: they
never enter events, logs, API responses or exports.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from kuadeploy.config import SecretsConfig
from kuadeploy.entry import Container, SecretRef

MARKER = "[secret]"

# The values resolved for deploys in progress (a count each: apps may share one). The
# server's log formatter masks them too: a traceback may quote anything.
_in_use: Counter[str] = Counter()


def hold(values: Iterable[str]) -> None:
    _in_use.update(v for v in values if v)


def release(values: Iterable[str]) -> None:
    _in_use.subtract(v for v in values if v)
    for value in [v for v, n in _in_use.items() if n <= 0]:
        del _in_use[value]


def in_use() -> list[str]:
    return list(_in_use)


class SecretError(Exception):
    pass


def mask(text: str, values: Iterable[str]) -> str:
    """`text` with every secret value in it replaced by MARKER.

    For output we did not write (a migration's, a container's health answer, an engine
    error): it may echo the env we gave it. One pass, longest value first, so a value
    that contains another is masked whole and no marker is matched again; empty values
    are skipped (they would match everywhere). A value is also masked as JSON writes
    it (quotes, backslashes, newlines, non-ASCII escaped): health answers are JSON.
    """
    pattern = _pattern(frozenset(v for v in values if v))
    return text if pattern is None else pattern.sub(MARKER, text)


@functools.lru_cache(maxsize=64)
def _pattern(values: frozenset[str]) -> re.Pattern[str] | None:
    """One compiled alternation per set of values: the server log masks every line
    with the same few values while deploys run."""
    wanted = sorted({form for v in values for form in _forms(v)}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, wanted))) if wanted else None


def _forms(value: str) -> set[str]:
    """`value` and its JSON string escapes (with and without ASCII-only output)."""
    return {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}


async def resolve_env(container: Container, provider: SecretsConfig) -> dict[str, str]:
    """env name -> value for every secret reference in `container.env`."""
    out: dict[str, str] = {}
    for key, value in container.env.items():
        if isinstance(value, SecretRef):
            out[key] = await resolve(value.secret, provider)
    return out


async def resolve(name: str, provider: SecretsConfig) -> str:
    if provider.dir:
        return await asyncio.to_thread(_from_dir, Path(provider.dir), name)
    if provider.command:
        return await _from_command(provider.command, name)
    raise SecretError(f"secret {name!r} is referenced but no [secrets] provider is configured")


def _from_dir(root: Path, name: str) -> str:
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise SecretError(f"secret name {name!r} leaves the secrets directory")
    try:
        return path.read_text().removesuffix("\n")
    except FileNotFoundError:
        raise SecretError(f"secret {name!r} not found in {root}") from None
    except OSError as exc:
        raise SecretError(f"secret {name!r}: {exc.strerror}") from None


async def _from_command(command: list[str], name: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            name,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,  # a provider's stderr may echo the value
        )
    except OSError as exc:
        raise SecretError(f"secret provider {command[0]!r}: {exc.strerror}") from None
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SecretError(f"secret {name!r}: provider exited with {proc.returncode}")
    return out.decode().removesuffix("\n")
