"""The docker adapter against the private test engines, with the sample app."""

from __future__ import annotations

import asyncio
import io
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from kuadeploy.adapters.docker import (
    BuildFailed,
    ContainerError,
    Engine,
    EngineUnavailable,
    ImageError,
)
from kuadeploy.adapters.docker_specs import (
    build_error,
    build_lines,
    checked_dockerfile,
    container_env,
    create_body,
    engine_url,
    parse_docker_time,
    parse_port,
    release_labels,
)
from kuadeploy.adapters.git import Mirror
from kuadeploy.entry import Container, SecretRef
from tests.fixtures.testapp import SampleApp


@pytest.fixture
async def engine_a(docker_a: str) -> AsyncIterator[Engine]:
    async with Engine(docker_a) as engine:
        yield engine


@pytest.fixture
async def engine_b(docker_b: str) -> AsyncIterator[Engine]:
    async with Engine(docker_b) as engine:
        yield engine


async def build(engine: Engine, app: SampleApp, sha: str, tmp_path: Path, **kw: object) -> str:
    """The pipeline's way: mirror, export the commit, build it with its labels."""
    mirror = Mirror.sync(app.repo, tmp_path / "mirror")
    context = tmp_path / f"ctx-{sha}"
    mirror.export(sha, context)
    return await engine.build(
        context,
        tag=f"kua/{app.name}:{sha}",
        build_args={"GIT_SHA": sha},
        labels=release_labels(app.name, sha, "deploy-1"),
        **kw,  # type: ignore[arg-type]
    )


async def start(engine: Engine, app: SampleApp, image: str, sha: str, **settings: object) -> str:
    container = Container(name=app.name, network_mode="host", **settings)  # type: ignore[arg-type]
    labels = release_labels(app.name, sha, "deploy-1")
    return await engine.start_container(app.name, container, image=image, labels=labels, sha=sha)


async def get_health(app: SampleApp, timeout_s: float = 5.0) -> tuple[int, str]:
    """First answer of the app's health URL (127.0.0.1 only), retrying until it listens."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(app.health_url) as response:
                    return response.status, await response.text()
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


# --- engine -----------------------------------------------------------------------


async def test_ping_answers_and_a_missing_engine_is_unavailable(
    engine_a: Engine, tmp_path: Path
) -> None:
    assert (await engine_a.ping())[0].isdigit()
    async with Engine(f"unix://{tmp_path}/no.sock") as gone:
        with pytest.raises(EngineUnavailable, match="ping"):
            await gone.ping()
        with pytest.raises(EngineUnavailable):
            await gone.inspect_container("anything")
    with pytest.raises(ValueError, match="ssh://"):
        Engine("ssh://host")


# --- images -----------------------------------------------------------------------


async def test_build_labels_bakes_the_sha_and_streams_the_log(
    engine_a: Engine, sample_app: SampleApp, tmp_path: Path
) -> None:
    lines: list[str] = []
    sha = sample_app.head
    image = await build(engine_a, sample_app, sha, tmp_path, on_log=lines.append)

    assert image.startswith("sha256:")
    inspected = await engine_a.inspect_image(f"kua/{sample_app.name}:{sha}")
    assert inspected is not None and inspected["Id"] == image
    assert inspected["Config"]["Labels"] == {
        "kua.app": sample_app.name,
        "kua.sha": sha,
        "kua.deploy": "deploy-1",
        "org.opencontainers.image.revision": sha,
    }
    assert f"APP_SHA={sha}" in inspected["Config"]["Env"]  # ARG GIT_SHA reached the image
    assert any(line.startswith("Step 1/") for line in lines)
    assert any("Successfully built" in line for line in lines)
    assert all(line.strip() for line in lines)


async def test_build_from_a_tar_with_a_dockerfile_in_a_subdirectory(
    engine_a: Engine, sample_app: SampleApp, tmp_path: Path
) -> None:
    context = tmp_path / "ctx"
    Mirror.sync(sample_app.repo, tmp_path / "mirror").export(sample_app.head, context)
    (context / "deploy").mkdir()
    (context / "Dockerfile").rename(context / "deploy" / "Dockerfile")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(context, arcname=".")
    image = await engine_a.build(
        archive.getvalue(),
        tag=f"kua/{sample_app.name}:tar",
        dockerfile="deploy/Dockerfile",
        labels={"kua.app": sample_app.name},
    )
    assert (await engine_a.inspect_image(image) or {}).get("Id") == image
    with pytest.raises(ValueError, match="inside the context"):
        await engine_a.build(archive.getvalue(), tag="x:y", dockerfile="../Dockerfile")


async def test_broken_dockerfile_fails_with_the_log_tail(
    engine_a: Engine, sample_app: SampleApp, tmp_path: Path
) -> None:
    sha = sample_app.broken_dockerfile()
    lines: list[str] = []
    with pytest.raises(BuildFailed) as failed:
        await build(engine_a, sample_app, sha, tmp_path, on_log=lines.append)
    assert "no-such-file" in str(failed.value)
    assert any("Step 3/" in line for line in failed.value.log_tail)
    assert "no-such-file" in failed.value.log_tail[-1]
    assert lines == failed.value.log_tail
    assert await engine_a.inspect_image(f"kua/{sample_app.name}:{sha}") is None


async def test_cancelling_a_build_stops_it_on_the_engine(
    engine_a: Engine, sample_app: SampleApp, tmp_path: Path
) -> None:
    sha = sample_app.slow_build(30)
    lines: list[str] = []
    building = asyncio.create_task(build(engine_a, sample_app, sha, tmp_path, on_log=lines.append))

    def sleeping_container() -> str | None:
        """The ID the engine reported for the RUN sleep step's container, once it did."""
        run_step = [i for i, line in enumerate(lines) if ": RUN " in line]
        after = lines[run_step[0] :] if run_step else []
        return next((line.split()[-1] for line in after if "Running in" in line), None)

    deadline = time.monotonic() + 10
    while (build_container := sleeping_container()) is None or not (
        state := await engine_a.inspect_container(build_container)
    ).running:
        assert time.monotonic() < deadline and not building.done(), lines
        await asyncio.sleep(0.05)
    assert state.running

    building.cancel()
    with pytest.raises(asyncio.CancelledError):
        await building
    deadline = time.monotonic() + 5
    while await engine_a.inspect_container(build_container) is not None:
        assert time.monotonic() < deadline, "the engine went on building"
        await asyncio.sleep(0.1)
    assert await engine_a.inspect_image(f"kua/{sample_app.name}:{sha}") is None


async def test_tag_list_and_remove_images(
    engine_a: Engine, sample_app: SampleApp, tmp_path: Path
) -> None:
    first = await build(engine_a, sample_app, sample_app.head, tmp_path)
    second_sha = sample_app.healthy("second")
    second = await build(engine_a, sample_app, second_sha, tmp_path)
    await engine_a.tag_image(first, f"kua/{sample_app.name}", "previous")

    listed = await engine_a.list_images({"kua.app": sample_app.name})
    # newest first; two builds within one second share a creation time
    assert {i.id for i in listed} == {second, first}
    assert [i.created for i in listed] == sorted((i.created for i in listed), reverse=True)
    by_id = {i.id: i for i in listed}
    assert f"kua/{sample_app.name}:previous" in by_id[first].tags
    assert by_id[second].labels["kua.sha"] == second_sha
    assert await engine_a.list_images({"kua.app": sample_app.name, "kua.sha": second_sha}) == [
        by_id[second]
    ]

    await start(engine_a, sample_app, first, sample_app.initial)
    with pytest.raises(ImageError, match="remove image"):
        await engine_a.remove_image(first)  # a running container uses it
    assert await engine_a.remove_container(sample_app.name, force=True)
    assert await engine_a.remove_image(first, force=True)
    assert await engine_a.inspect_image(first) is None
    assert not await engine_a.remove_image(first)
    with pytest.raises(ImageError):
        await engine_a.tag_image("sha256:" + "0" * 64, "kua/x", "y")


# --- containers -------------------------------------------------------------------


async def test_container_lifecycle_from_the_entry_settings(
    engine_a: Engine, sample_app: SampleApp, tmp_path: Path
) -> None:
    sha = sample_app.head
    image = await build(engine_a, sample_app, sha, tmp_path)
    before = time.time()
    container_id = await start(engine_a, sample_app, image, sha)

    assert await get_health(sample_app) == (200, f"sha={sha}\n")
    state = await engine_a.inspect_container(sample_app.name)
    assert state is not None
    assert (state.id, state.name, state.image_id) == (container_id, sample_app.name, image)
    assert state.running and state.status == "running" and state.restart_count == 0
    assert state.labels["kua.sha"] == sha and state.labels["kua.deploy"] == "deploy-1"
    assert state.started_at is not None and state.started_at.timestamp() >= before - 1
    assert state.finished_at is None
    assert await engine_a.list_containers({"kua.app": sample_app.name}) == [state]
    assert await engine_a.list_containers({"kua.app": sample_app.name, "kua.sha": "x"}) == []

    stopping = time.monotonic()
    assert await engine_a.stop_container(sample_app.name, timeout_s=10)
    assert time.monotonic() - stopping < 3  # the app handles SIGTERM, no 10 s kill
    state = await engine_a.inspect_container(sample_app.name)
    assert state is not None and not state.running and state.exit_code == 0
    assert state.finished_at is not None

    await engine_a.rename_container(sample_app.name, f"{sample_app.name}-old")
    assert await engine_a.inspect_container(sample_app.name) is None
    assert await engine_a.remove_container(f"{sample_app.name}-old")
    assert not await engine_a.remove_container(f"{sample_app.name}-old")
    assert not await engine_a.stop_container(sample_app.name)
    assert await engine_a.inspect_container(f"{sample_app.name}-old") is None


async def test_a_container_that_cannot_start_leaves_its_name_free(
    engine_a: Engine, sample_app: SampleApp, tmp_path: Path
) -> None:
    image = await build(engine_a, sample_app, sample_app.head, tmp_path)
    with pytest.raises(ContainerError, match="start container"):
        await start(engine_a, sample_app, image, sample_app.head, command=["/no/such/binary"])
    assert await engine_a.inspect_container(sample_app.name) is None

    await start(engine_a, sample_app, image, sample_app.head)
    with pytest.raises(ContainerError, match="create container"):
        await start(engine_a, sample_app, image, sample_app.head)  # name taken
    assert (await get_health(sample_app))[0] == 200  # the first one still serves


async def test_variant_exiting_after_a_second_restarts_or_stays_down(
    engine_a: Engine, make_sample_app: Callable[..., SampleApp], tmp_path: Path
) -> None:
    restarting, once = make_sample_app(), make_sample_app()
    images = {}
    for app in (restarting, once):
        sha = app.exits_after(1)
        images[app.name] = (await build(engine_a, app, sha, tmp_path / app.name), sha)
    await start(engine_a, restarting, *images[restarting.name], restart="unless-stopped")
    await start(engine_a, once, *images[once.name], restart="no")

    deadline = time.monotonic() + 8
    while True:
        up = await engine_a.inspect_container(restarting.name)
        down = await engine_a.inspect_container(once.name)
        assert up is not None and down is not None
        if up.restart_count >= 1 and not down.running:
            break
        assert time.monotonic() < deadline, (up, down)
        await asyncio.sleep(0.1)
    assert (down.status, down.exit_code, down.restart_count) == ("exited", 3, 0)
    assert down.started_at and down.finished_at
    assert 0.9 <= (down.finished_at - down.started_at).total_seconds() < 3


async def test_variants_health_500_and_another_sha(
    engine_a: Engine, sample_app: SampleApp, tmp_path: Path
) -> None:
    status_sha = sample_app.health_status(500)
    image = await build(engine_a, sample_app, status_sha, tmp_path)
    await start(engine_a, sample_app, image, status_sha)
    assert await get_health(sample_app) == (500, f"sha={status_sha}\n")
    await engine_a.remove_container(sample_app.name, force=True)

    other = "f" * 40
    lying_sha = sample_app.reports_sha(other)
    image = await build(engine_a, sample_app, lying_sha, tmp_path)
    await start(engine_a, sample_app, image, lying_sha)
    assert await get_health(sample_app) == (200, f"sha={other}\n")
    state = await engine_a.inspect_container(sample_app.name)
    assert state is not None and state.labels["kua.sha"] == lying_sha  # labels say otherwise


# --- one-off containers (migrations) ----------------------------------------------


async def test_run_once_returns_exit_code_and_output_and_leaves_nothing(
    engine_a: Engine, sample_app: SampleApp, tmp_path: Path
) -> None:
    labels = release_labels(sample_app.name, "x", "deploy-1")
    settings = Container(
        network_mode="none",
        env={"PLAIN": "plain-value", "DB_PASSWORD": SecretRef(secret="web/db")},
        volumes=[f"{tmp_path}:/data"],
        restart="unless-stopped",  # must not apply to a one-off run
    )
    ok_sha = sample_app.add_migration(exit_code=0)
    image = await build(engine_a, sample_app, ok_sha, tmp_path)
    result = await engine_a.run_once(
        image,
        ["./migrate"],
        settings,
        labels=labels,
        sha=ok_sha,
        resolved_env={"DB_PASSWORD": "pw"},
    )
    assert result.exit_code == 0
    assert result.output == f"migrate: sha={ok_sha} migrations: 0001.sql \n"

    script = 'echo "$KUA_GIT_SHA $PLAIN $DB_PASSWORD" > /data/env; echo to-stderr >&2; exit 7'
    result = await engine_a.run_once(
        image,
        ["/bin/sh", "-c", script],
        settings,
        labels=labels,
        sha=ok_sha,
        resolved_env={"DB_PASSWORD": "pw"},
    )
    assert (result.exit_code, result.output) == (7, "to-stderr\n")
    assert (tmp_path / "env").read_text() == f"{ok_sha} plain-value pw\n"

    failing_sha = sample_app.add_migration(exit_code=2)
    image = await build(engine_a, sample_app, failing_sha, tmp_path)
    result = await engine_a.run_once(
        image,
        ["./migrate"],
        settings,
        labels=labels,
        sha=failing_sha,
        resolved_env={"DB_PASSWORD": "pw"},
    )
    assert result.exit_code == 2 and "0001.sql 0002.sql" in result.output

    with pytest.raises(ContainerError, match="no exit after"):
        await engine_a.run_once(
            image,
            ["/bin/busybox", "sleep", "30"],
            settings,
            labels=labels,
            sha=None,
            resolved_env={"DB_PASSWORD": "pw"},
            timeout_s=0.5,
        )
    with pytest.raises(ValueError, match="web/db"):
        await engine_a.run_once(image, ["true"], settings, labels=labels, sha=None)
    assert await engine_a.list_containers({"kua.app": sample_app.name}) == []


# --- two servers ------------------------------------------------------------------


async def test_two_engines_are_separate(
    engine_a: Engine, engine_b: Engine, sample_app: SampleApp, tmp_path: Path
) -> None:
    image = await build(engine_b, sample_app, sample_app.head, tmp_path)
    assert await engine_b.inspect_image(image) is not None
    assert await engine_a.inspect_image(image) is None
    assert await engine_a.list_images({"kua.app": sample_app.name}) == []


# --- pure translations ------------------------------------------------------------


def test_parse_port() -> None:
    assert parse_port("80") == ("80/tcp", None)
    assert parse_port("8080:80") == ("80/tcp", {"HostIp": "", "HostPort": "8080"})
    assert parse_port("127.0.0.1:53:53/udp") == (
        "53/udp",
        {"HostIp": "127.0.0.1", "HostPort": "53"},
    )
    assert parse_port("[::1]:8080:80") == ("80/tcp", {"HostIp": "::1", "HostPort": "8080"})
    for bad in ("", "http", "80/icmp", ":80", "a:b:c:80"):
        with pytest.raises(ValueError):
            parse_port(bad)


def test_create_body_and_env() -> None:
    settings = Container(
        name="web",
        env={"A": "1", "PW": SecretRef(secret="web/db")},
        ports=["127.0.0.1:8080:80", "9090"],
        volumes=["/srv/web:/data:ro"],
        network_mode="none",
        command=["serve", "--fast"],
        restart="on-failure",
    )
    env = container_env(settings, {"PW": "s3cret"}, "abc")
    assert env == {"A": "1", "PW": "s3cret", "KUA_GIT_SHA": "abc"}
    body = create_body(settings, image="img", labels={"kua.app": "web"}, env=env)
    assert body == {
        "Image": "img",
        "Env": ["A=1", "PW=s3cret", "KUA_GIT_SHA=abc"],
        "Labels": {"kua.app": "web"},
        "ExposedPorts": {"80/tcp": {}, "9090/tcp": {}},
        "Cmd": ["serve", "--fast"],
        "HostConfig": {
            "NetworkMode": "none",
            "Binds": ["/srv/web:/data:ro"],
            "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
            "RestartPolicy": {"Name": "on-failure"},
        },
    }
    assert "Cmd" not in create_body(Container(), image="i", labels={}, env={})
    with pytest.raises(ValueError, match="web/db"):
        container_env(settings, {}, None)


def test_small_translations() -> None:
    assert engine_url("tcp://10.0.0.5:2376", tls=True) == "https://10.0.0.5:2376"
    assert engine_url("tcp://127.0.0.1:2375", tls=False) == "http://127.0.0.1:2375"
    assert engine_url("unix:///run/docker.sock", tls=False) == "unix:///run/docker.sock"
    assert build_error({"stream": "Step 1/2"}) is None
    assert build_error({"error": "x", "errorDetail": {"message": "COPY failed"}}) == "COPY failed"
    assert build_lines({"stream": "a\n\nb\n"}) == ["a", "b"]
    assert checked_dockerfile("./docker/Dockerfile") == "docker/Dockerfile"
    for bad in ("", "/Dockerfile", "../Dockerfile", "a/../../Dockerfile"):
        with pytest.raises(ValueError):
            checked_dockerfile(bad)
    parsed = parse_docker_time("2026-11-27T17:01:43.733189123Z")
    assert parsed is not None and parsed.isoformat() == "2026-11-27T17:01:43.733189+00:00"
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time("2026-11-27T17:01:43Z") is not None
