"""Pure: the running orchestrator's container, carried over to another image.

The configuration comes from the engine's inspect of the running container, not
from the registry: what an operator set by hand or in compose (mounts, groups,
env, network, restart policy, labels) is what the new container gets. What the
old *image* contributed (its env, labels, command, user, healthcheck…) is left
out, so the new image's own defaults apply — above all its baked KUA_GIT_SHA.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kuadeploy.adapters.docker_specs import (
    ENV_SHA,
    LABEL_APP,
    LABEL_DEPLOY,
    LABEL_REVISION,
    LABEL_SHA,
)

LABEL_ROLE = "kua.role"
ROLE_HANDOFF = "self-handoff"
_RELEASE_LABELS = {LABEL_APP, LABEL_SHA, LABEL_DEPLOY, LABEL_REVISION, LABEL_ROLE}
# Config keys that override the image only when they differ from it.
_OVERRIDES = ("User", "WorkingDir", "StopSignal", "StopTimeout", "Healthcheck")
_AS_IS = ("Tty", "OpenStdin", "StdinOnce")
_NO_ENDPOINT = ("host", "none", "default", "bridge")


def _config(doc: Mapping[str, Any]) -> dict[str, Any]:
    return dict(doc.get("Config") or {})


def carried_env(container: Mapping[str, Any], image: Mapping[str, Any]) -> list[str]:
    """The container's env minus what its image baked in (and never a stale SHA)."""
    baked = set(_config(image).get("Env") or [])
    return [
        item
        for item in _config(container).get("Env") or []
        if item not in baked and not item.startswith(ENV_SHA + "=")
    ]


def carried_labels(container: Mapping[str, Any], image: Mapping[str, Any]) -> dict[str, str]:
    """The container's own labels (compose's, an operator's), without release labels."""
    baked = _config(image).get("Labels") or {}
    return {
        k: v
        for k, v in (_config(container).get("Labels") or {}).items()
        if baked.get(k) != v and k not in _RELEASE_LABELS
    }


def carried_binds(container: Mapping[str, Any]) -> list[str]:
    """Binds as configured, plus anonymous volumes (an image's VOLUME, such as
    /app/data without a named volume) by name, so the data goes along."""
    host = container.get("HostConfig") or {}
    binds = list(host.get("Binds") or [])
    covered = {b.split(":")[1] for b in binds if b.count(":") >= 1}
    covered |= {m.get("Target") for m in host.get("Mounts") or []}
    for mount in container.get("Mounts") or []:
        if mount.get("Type") == "volume" and mount.get("Destination") not in covered:
            ro = "" if mount.get("RW", True) else ":ro"
            binds.append(f"{mount['Name']}:{mount['Destination']}{ro}")
    return binds


def _networking(container: Mapping[str, Any]) -> dict[str, Any] | None:
    """The endpoint on the container's own network (aliases, fixed address)."""
    mode = (container.get("HostConfig") or {}).get("NetworkMode") or "default"
    if mode in _NO_ENDPOINT or mode.startswith("container:"):
        return None
    net = ((container.get("NetworkSettings") or {}).get("Networks") or {}).get(mode)
    if not net:
        return None
    short = str(container.get("Id", ""))[:12]
    aliases = [a for a in net.get("Aliases") or [] if a != short]
    endpoint = {"Aliases": aliases or None, "IPAMConfig": net.get("IPAMConfig")}
    return {"EndpointsConfig": {mode: endpoint}}


def recreate_body(
    container: Mapping[str, Any],
    image: Mapping[str, Any],
    *,
    new_image: str,
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """`POST /containers/create` body: `container`'s configuration on `new_image`.

    `image` is the inspect of the image `container` runs; `labels` are the new
    release's labels.
    """
    cfg, img = _config(container), _config(image)
    body: dict[str, Any] = {
        "Image": new_image,
        "Env": carried_env(container, image),
        "Labels": {**carried_labels(container, image), **labels},
    }
    if (cfg.get("Entrypoint"), cfg.get("Cmd")) != (img.get("Entrypoint"), img.get("Cmd")):
        body["Entrypoint"] = cfg.get("Entrypoint")
        body["Cmd"] = cfg.get("Cmd")
    for key in _OVERRIDES:
        if cfg.get(key) != img.get(key) and cfg.get(key) is not None:
            body[key] = cfg[key]
    for key in _AS_IS:
        if key in cfg:
            body[key] = cfg[key]
    for key in ("ExposedPorts", "Volumes"):
        extra = {k: v for k, v in (cfg.get(key) or {}).items() if k not in (img.get(key) or {})}
        if extra:
            body[key] = extra
    host = dict(container.get("HostConfig") or {})
    host["Binds"] = carried_binds(container)
    body["HostConfig"] = host
    networking = _networking(container)
    if networking is not None:
        body["NetworkingConfig"] = networking
    return body


def transient_body(
    container: Mapping[str, Any],
    image: Mapping[str, Any],
    *,
    new_image: str,
    labels: Mapping[str, str],
    command: list[str],
) -> dict[str, Any]:
    """The transient container: the orchestrator's mounts, groups, user and env (so
    it reaches the same engine socket, config and ledger), on the new image, running
    `kuadeploy COMMAND…` once on the host network, removed by the engine on exit."""
    body = recreate_body(
        container, image, new_image=new_image, labels={**labels, LABEL_ROLE: ROLE_HANDOFF}
    )
    body["Entrypoint"] = ["kuadeploy"]
    body["Cmd"] = list(command)
    body["Healthcheck"] = {"Test": ["NONE"]}
    body.pop("ExposedPorts", None)
    body.pop("NetworkingConfig", None)
    body["HostConfig"].update(
        AutoRemove=True,
        RestartPolicy={"Name": "no", "MaximumRetryCount": 0},
        PortBindings={},
        NetworkMode="host",
        PublishAllPorts=False,
    )
    return body


def image_reference(container: Mapping[str, Any]) -> tuple[str, str] | None:
    """(repository, tag) the container was created from, when it names one rather
    than an image ID: `kuadeploy:latest` in docker-compose.yml, say."""
    ref = str(_config(container).get("Image") or "")
    if not ref or ref.startswith("sha256:") or "@" in ref:
        return None
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:  # no tag, or the colon was a registry's port
        return ref, "latest"
    return repo, tag
