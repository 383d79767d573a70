"""A thin async adapter over one Docker engine (aiodocker).

One `Engine` per configured server. Every failure leaves as a typed error the
pipeline can record as a reason: `EngineUnavailable` (cannot reach the engine),
`BuildFailed` (with the build log's tail), `ContainerError` (create, start, stop
or a one-off run went wrong), `ImageError`. Absent containers and images are not
errors: inspect returns None and removal reports whether something was removed.
"""

from __future__ import annotations

import asyncio
import io
import json
import posixpath
import ssl
import tarfile
import tempfile
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import aiodocker
import aiohttp
import msgspec

from kuadeploy.adapters.docker_specs import (
    LABEL_APP,
    build_error,
    build_lines,
    checked_dockerfile,
    container_env,
    create_body,
    engine_url,
    one_off_settings,
    parse_docker_time,
)
from kuadeploy.adapters.dockerignore import context_paths
from kuadeploy.entry import Container

# aiodocker reports a refused or broken connection as this pseudo HTTP status.
_CONNECTION_FAILED = 900
_LOG_TAIL_LINES = 40


class EngineError(Exception):
    """Base of every error this adapter raises."""


class EngineUnavailable(EngineError):
    """The engine did not answer: socket missing, connection refused, TLS, timeout."""


class BuildFailed(EngineError):
    def __init__(self, message: str, log_tail: list[str]) -> None:
        super().__init__(message)
        self.log_tail = log_tail


class ContainerError(EngineError):
    pass


class ImageError(EngineError):
    pass


class TlsFiles(msgspec.Struct, frozen=True):
    """Client certificate, key and CA bundle paths for `tcp://` engines."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None


class ContainerState(msgspec.Struct, frozen=True):
    id: str
    name: str
    image_id: str
    running: bool
    status: str  # created, running, restarting, exited, …
    exit_code: int
    restart_count: int
    labels: dict[str, str]
    started_at: datetime | None
    finished_at: datetime | None
    error: str


class ImageInfo(msgspec.Struct, frozen=True):
    id: str
    tags: list[str]
    labels: dict[str, str]
    created: int  # unix seconds


class OneOffResult(msgspec.Struct, frozen=True):
    exit_code: int
    output: str  # stdout and stderr, interleaved as the engine recorded them


def ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.ca)
    if tls.cert:
        context.load_cert_chain(tls.cert, tls.key)
    return context


def tar_directory(
    directory: Path, dockerfile: str = "Dockerfile", dockerfile_suffix: str = ""
) -> IO[bytes]:
    """The build context as a tar file on disk (contexts can be large), filtered by
    its .dockerignore as the docker CLI does; symlinks stay links, never followed.
    Owners are 0:0 with no names, as the CLI sends them, so layers built from the
    same files by either are the same cache entries. `dockerfile_suffix` is added
    to the Dockerfile as sent (the files on disk are not touched)."""
    target = posixpath.normpath(dockerfile)
    buffer = tempfile.TemporaryFile()  # noqa: SIM115 (the build closes it)
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for rel in context_paths(directory, dockerfile):
            info = tar.gettarinfo(directory / rel, arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if rel == target and dockerfile_suffix and (info.isreg() or info.issym()):
                text = (directory / rel).read_bytes()
                text += (b"" if text.endswith(b"\n") else b"\n") + dockerfile_suffix.encode()
                info.type, info.linkname, info.size = tarfile.REGTYPE, "", len(text)
                tar.addfile(info, io.BytesIO(text))
            elif info.isreg():
                with open(directory / rel, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    buffer.seek(0)
    return buffer


def label_instruction(labels: Mapping[str, str]) -> str:
    """All labels in one LABEL instruction: the legacy builder turns each label of the
    API's `labels` parameter into a step of its own, an image commit each (~50 ms)."""
    pairs = " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(labels.items()))
    return f"LABEL {pairs}\n"


class Engine:
    """One Docker engine. Use as `async with Engine(url) as engine:` or close()."""

    def __init__(
        self,
        url: str,
        *,
        tls: TlsFiles | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self._connect_timeout_s = connect_timeout_s
        self._docker = aiodocker.Docker(
            url=engine_url(url, tls is not None),
            ssl_context=ssl_context(tls) if tls else None,
            timeout=aiohttp.ClientTimeout(connect=connect_timeout_s),
        )

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._docker.close()

    @asynccontextmanager
    async def _calling(self, what: str) -> AsyncIterator[None]:
        """Nothing untyped leaves: transport failures become EngineUnavailable,
        engine errors no operation handled become EngineError."""
        try:
            yield
        except aiodocker.DockerError as e:
            raise _failure(e, what, EngineError) from e
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise EngineUnavailable(f"{what}: engine {self.url} unreachable: {e!r}") from e

    async def ping(self) -> str:
        """The engine's version; raises EngineUnavailable when it does not answer."""
        async with self._calling("ping"):
            try:
                version = await self._docker.version()
            except aiodocker.DockerError as e:  # e.g. plain http to a TLS port
                raise EngineUnavailable(f"ping {self.url}: {e.message}") from e
        return str(version["Version"])

    # --- images ---------------------------------------------------------------

    async def build(
        self,
        context: Path | bytes,
        *,
        tag: str,
        dockerfile: str = "Dockerfile",
        build_args: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        on_log: Callable[[str], object] | None = None,
    ) -> str:
        """Build `context` (a directory or a tar archive) and return the image ID.

        Each log line goes to `on_log` as it arrives. A failing build raises
        BuildFailed carrying the last lines of the log and the engine's error.
        """
        params = {
            "t": tag,
            "dockerfile": checked_dockerfile(dockerfile),
            "buildargs": _json(dict(build_args or {})),
            "rm": "1",
            "forcerm": "1",  # no intermediate containers left after a failure
        }
        if isinstance(context, Path):
            suffix = label_instruction(labels) if labels else ""
            archive = await asyncio.to_thread(tar_directory, context, dockerfile, suffix)
        else:
            params["labels"] = _json(dict(labels or {}))
            archive = io.BytesIO(context)
        tail: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
        image_id: str | None = None
        error: str | None = None

        async with self._calling("build"):
            try:
                # aiodocker's images.build() cannot close its response when the
                # caller is cancelled; closing it is what stops the engine's build.
                query = self._docker._query(
                    "build",
                    "POST",
                    params=params,
                    headers={"content-type": "application/x-tar"},
                    data=archive,
                    timeout=aiohttp.ClientTimeout(connect=self._connect_timeout_s),
                )
                async with query as response:
                    try:
                        async for raw in response.content:
                            chunk = json.loads(raw) if raw.strip() else {}
                            for line in build_lines(chunk):
                                tail.append(line)
                                if on_log is not None:
                                    on_log(line)
                            error = error or build_error(chunk)
                            aux = chunk.get("aux")
                            if isinstance(aux, dict) and "ID" in aux:
                                image_id = str(aux["ID"])
                    finally:
                        response.close()
            except aiodocker.DockerError as e:  # refused before building: bad Dockerfile path …
                if e.status == _CONNECTION_FAILED:
                    raise EngineUnavailable(f"build: {e.message}") from e
                error = e.message
            finally:
                archive.close()
        if error is not None:
            tail.append(f"ERROR: {error}")
            if on_log is not None:
                on_log(tail[-1])
            raise BuildFailed(f"build of {tag} failed: {error}", list(tail))
        if image_id is None:  # engines that predate the aux ID message
            image_id = (await self.inspect_image(tag) or {}).get("Id")
            if image_id is None:
                raise BuildFailed(f"build of {tag} reported no image", list(tail))
        return image_id

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        async with self._calling("inspect image"):
            try:
                return await self._docker.images.inspect(ref)
            except aiodocker.DockerError as e:
                if e.status == 404:
                    return None
                raise _failure(e, f"inspect image {ref}", ImageError) from e

    async def tag_image(self, image: str, repo: str, tag: str) -> None:
        async with self._calling("tag image"):
            try:
                await self._docker.images.tag(image, repo, tag=tag)
            except aiodocker.DockerError as e:
                raise _failure(e, f"tag {image} as {repo}:{tag}", ImageError) from e

    async def remove_image(self, ref: str, *, force: bool = False) -> bool:
        """Untag/remove `ref`; False when it did not exist. In use → ImageError."""
        async with self._calling("remove image"):
            try:
                await self._docker.images.delete(ref, force=force)
            except aiodocker.DockerError as e:
                if e.status == 404:
                    return False
                raise _failure(e, f"remove image {ref}", ImageError) from e
        return True

    async def list_images(self, labels: Mapping[str, str]) -> list[ImageInfo]:
        """Images carrying all of these labels, newest first."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        async with self._calling("list images"):
            rows = await self._docker.images.list(filters=filters)
        images = [
            ImageInfo(
                id=row["Id"],
                tags=[t for t in row.get("RepoTags") or [] if t != "<none>:<none>"],
                labels=row.get("Labels") or {},
                created=int(row.get("Created") or 0),
            )
            for row in rows
        ]
        return sorted(images, key=lambda i: i.created, reverse=True)

    # --- containers -----------------------------------------------------------

    async def start_container(
        self,
        name: str,
        settings: Container,
        *,
        image: str,
        labels: Mapping[str, str],
        sha: str | None,
        resolved_env: Mapping[str, str] | None = None,
    ) -> str:
        """Create and start container `name` from the entry's settings; its ID.

        The env is the entry's plain values, `resolved_env` for its secret
        references, and KUA_GIT_SHA. A container that cannot start is removed
        again, so the name stays free for a retry or a rollback.
        """
        env = container_env(settings, resolved_env or {}, sha)
        body = create_body(settings, image=image, labels=labels, env=env)
        return await self.create_and_start(name, body)

    async def create_and_start(self, name: str, body: Mapping[str, Any]) -> str:
        """Create container `name` from a raw `POST /containers/create` body and start
        it; its ID. One that cannot start is removed again (its volumes kept)."""
        async with self._calling("create container"):
            try:
                created = await self._docker.containers.create(dict(body), name=name)
            except aiodocker.DockerError as e:
                raise _failure(e, f"create container {name}", ContainerError) from e
            try:
                await created.start()
            except aiodocker.DockerError as e:
                await self.remove_container(created.id, force=True, volumes=False)
                raise _failure(e, f"start container {name}", ContainerError) from e
        return created.id

    async def start_existing(self, name: str) -> None:
        """Start a created or stopped container again, as it was configured."""
        async with self._calling("start container"):
            try:
                await self._docker.containers.container(name).start()
            except aiodocker.DockerError as e:
                raise _failure(e, f"start container {name}", ContainerError) from e

    async def stop_container(self, name: str, *, timeout_s: int = 10) -> bool:
        """SIGTERM, then SIGKILL after `timeout_s`; False when there is no such container."""
        async with self._calling("stop container"):
            try:
                await self._docker.containers.container(name).stop(t=timeout_s)
            except aiodocker.DockerError as e:
                if e.status == 404:
                    return False
                raise _failure(e, f"stop container {name}", ContainerError) from e
        return True

    async def remove_container(
        self, name: str, *, force: bool = False, volumes: bool = True
    ) -> bool:
        """Remove `name` (killing it first with force); False when it did not exist.
        `volumes=False` keeps its anonymous volumes (they may hold data in use)."""
        async with self._calling("remove container"):
            try:
                await self._docker.containers.container(name).delete(force=force, v=volumes)
            except aiodocker.DockerError as e:
                if e.status == 404:
                    return False
                raise _failure(e, f"remove container {name}", ContainerError) from e
        return True

    async def rename_container(self, name: str, new_name: str) -> None:
        async with self._calling("rename container"):
            try:
                await self._docker.containers.container(name).rename(new_name)
            except aiodocker.DockerError as e:
                raise _failure(e, f"rename container {name} to {new_name}", ContainerError) from e

    async def inspect_container_raw(self, name: str) -> dict[str, Any] | None:
        """The engine's whole inspect document (`docker inspect`), or None."""
        async with self._calling("inspect container"):
            try:
                return await self._docker.containers.container(name).show()
            except aiodocker.DockerError as e:
                if e.status == 404:
                    return None
                raise _failure(e, f"inspect container {name}", ContainerError) from e

    async def inspect_container(self, name: str) -> ContainerState | None:
        data = await self.inspect_container_raw(name)
        if data is None:
            return None
        state = data["State"]
        return ContainerState(
            id=data["Id"],
            name=data["Name"].lstrip("/"),
            image_id=data["Image"],
            running=bool(state["Running"]),
            status=state["Status"],
            exit_code=int(state["ExitCode"]),
            restart_count=int(data.get("RestartCount") or 0),
            labels=data["Config"].get("Labels") or {},
            started_at=parse_docker_time(state.get("StartedAt")),
            finished_at=parse_docker_time(state.get("FinishedAt")),
            error=state.get("Error") or "",
        )

    async def list_containers(self, labels: Mapping[str, str]) -> list[ContainerState]:
        """Containers (running or not) carrying all of these labels."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        async with self._calling("list containers"):
            rows = await self._docker.containers.list(all=True, filters=_json(filters))
        found = [await self.inspect_container(row.id) for row in rows]
        return [state for state in found if state is not None]

    async def run_once(
        self,
        image: str,
        command: list[str],
        settings: Container,
        *,
        labels: Mapping[str, str],
        sha: str | None,
        resolved_env: Mapping[str, str] | None = None,
        timeout_s: float = 600.0,
    ) -> OneOffResult:
        """Run `command` in a throwaway container with the app's env, volumes and
        network; wait for it, collect its output, remove it whatever happens."""
        settings = one_off_settings(settings, command)
        env = container_env(settings, resolved_env or {}, sha)
        body = create_body(settings, image=image, labels=labels, env=env)
        name = f"{one_off_prefix(labels.get(LABEL_APP, 'once'))}{uuid.uuid4().hex[:12]}"
        async with self._calling("one-off container"):
            try:
                container = await self._docker.containers.create(body, name=name)
            except aiodocker.DockerError as e:
                raise _failure(e, "create one-off container", ContainerError) from e
            try:
                await container.start()
                async with asyncio.timeout(timeout_s):
                    result = await container.wait()
                lines = await container.log(stdout=True, stderr=True)
            except aiodocker.DockerError as e:
                raise _failure(e, f"one-off {command}", ContainerError) from e
            except TimeoutError as e:
                raise ContainerError(f"one-off {command}: no exit after {timeout_s}s") from e
            finally:
                await asyncio.shield(self.remove_container(container.id, force=True))
        return OneOffResult(exit_code=int(result["StatusCode"]), output="".join(lines))


def one_off_prefix(app: str) -> str:
    """How the names of `run_once` containers of `app` begin."""
    return f"{app}-once-"


def _failure(error: aiodocker.DockerError, what: str, kind: type[EngineError]) -> EngineError:
    """`kind` for what the engine refused; EngineUnavailable when it was not reached."""
    if error.status == _CONNECTION_FAILED:
        return EngineUnavailable(f"{what}: {error.message}")
    return kind(f"{what}: {error.message}")


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()
