"""Pure translations from registry settings to Docker Engine API bodies.

No I/O here: the engine adapter (`docker.py`) sends what these functions build,
so what a container will look like can be checked without an engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

import msgspec

from kuadeploy.entry import Container, SecretRef

LABEL_APP = "kua.app"
LABEL_SHA = "kua.sha"
LABEL_DEPLOY = "kua.deploy"
LABEL_REVISION = "org.opencontainers.image.revision"
ENV_SHA = "KUA_GIT_SHA"
BUILD_ARG_SHA = "GIT_SHA"


def release_labels(app: str, sha: str, deploy_id: str) -> dict[str, str]:
    """The labels DESIGN §5 puts on every image and container kuadeploy makes."""
    return {LABEL_APP: app, LABEL_SHA: sha, LABEL_DEPLOY: deploy_id, LABEL_REVISION: sha}


def container_env(
    settings: Container, resolved: Mapping[str, str], sha: str | None
) -> dict[str, str]:
    """The container's environment: plain values, then resolved secret references.

    `resolved` maps env names whose entry value is a secret reference to their
    value; a reference without a resolved value is the caller's bug, never an
    empty variable in production.
    """
    env: dict[str, str] = {}
    for name, value in settings.env.items():
        if isinstance(value, SecretRef):
            if name not in resolved:
                raise ValueError(f"env {name}: secret {value.secret!r} was not resolved")
            env[name] = resolved[name]
        else:
            env[name] = value
    if sha is not None:
        env[ENV_SHA] = sha
    return env


def parse_port(spec: str) -> tuple[str, dict[str, str] | None]:
    """`[ip:][host_port:]container_port[/proto]` → ("80/tcp", binding or None)."""
    rest, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"port {spec!r}: protocol must be tcp, udp or sctp")
    parts = rest.rsplit(":", 2)
    numbers = parts[-2:]
    if not all(p.isascii() and p.isdigit() for p in numbers) or (len(parts) == 3 and not parts[0]):
        raise ValueError(f"port {spec!r}: expected [ip:][host_port:]container_port[/proto]")
    if not 0 < int(parts[-1]) <= 65535 or int(numbers[0]) > 65535:  # host port 0: any free one
        raise ValueError(f"port {spec!r}: port numbers run from 1 to 65535")
    exposed = f"{parts[-1]}/{proto}"
    if len(parts) == 1:
        return exposed, None
    host_ip = parts[0].strip("[]") if len(parts) == 3 else ""
    return exposed, {"HostIp": host_ip, "HostPort": parts[-2]}


def create_body(
    settings: Container,
    *,
    image: str,
    labels: Mapping[str, str],
    env: Mapping[str, str],
) -> dict[str, Any]:
    """The `POST /containers/create` body for a container with these settings."""
    exposed: dict[str, dict] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for spec in settings.ports:
        port, binding = parse_port(spec)
        exposed[port] = {}
        if binding is not None:
            bindings.setdefault(port, []).append(binding)
    body: dict[str, Any] = {
        "Image": image,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Labels": dict(labels),
        "ExposedPorts": exposed,
        "HostConfig": {
            "NetworkMode": settings.network_mode,
            "Binds": list(settings.volumes),
            "PortBindings": bindings,
            "RestartPolicy": {"Name": settings.restart},
        },
    }
    if settings.command is not None:
        body["Cmd"] = list(settings.command)
    return body


def one_off_settings(settings: Container, command: list[str]) -> Container:
    """The app's env, volumes and network, running `command` once: no restarts,
    no published ports (they belong to the app's long-running container)."""
    return msgspec.structs.replace(settings, command=command, restart="no", ports=[], name=None)


def checked_dockerfile(path: str) -> str:
    """A Dockerfile path relative to the build context, never leaving it."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"dockerfile {path!r} must be a relative path inside the context")
    return str(pure)


def engine_url(url: str, tls: bool) -> str:
    """aiohttp speaks http(s), not Docker's tcp:// spelling."""
    if url.startswith("tcp://"):
        return ("https://" if tls else "http://") + url.removeprefix("tcp://")
    if url.startswith(("unix://", "http://", "https://")):
        return url
    raise ValueError(f"docker URL {url!r}: expected unix://, tcp://, http:// or https://")


def parse_docker_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 with nanoseconds; its zero time means "never"."""
    if not value or value.startswith("0001-01-01"):
        return None
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def build_lines(chunk: dict[str, Any]) -> list[str]:
    """The log lines in one message of the engine's JSON build stream."""
    text = str(chunk.get("stream") or chunk.get("status") or "")
    return [line for line in text.splitlines() if line.strip()]


def build_error(chunk: dict[str, Any]) -> str | None:
    """The error a build stream message reports (the HTTP status stays 200), if any."""
    if "error" not in chunk and "errorDetail" not in chunk:
        return None
    detail = chunk.get("errorDetail")
    message = detail.get("message") if isinstance(detail, dict) else None
    return str(message or chunk.get("error") or "unknown build error")
