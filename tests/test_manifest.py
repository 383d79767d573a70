"""kua.json → registry entry (docs/kua-json.md), and `kuadeploy apps import-manifest`
reading it from a real git repository into a running server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kuadeploy.entry import entry_from_builtins
from kuadeploy.manifest import ManifestError, manifest_to_entry, parse_manifest
from tests.api_support import TOKENS, make_config, running
from tests.fixtures.testapp import git
from tests.support import ROOT

MANIFEST = json.loads((ROOT / "kua.json").read_text())
REPO = "https://forge.example.org/infra/kuadeploy.git"


def test_manifest_becomes_an_entry_with_the_importers_values_on_top() -> None:
    name, doc = manifest_to_entry(MANIFEST, {"repo": REPO, "container": {"env": {"A": "1"}}})
    assert name == "kuadeploy"
    assert "name" not in doc and "health_url" not in doc
    assert doc["verify"] == {**MANIFEST["verify"], "health_url": MANIFEST["health_url"]}
    assert doc["repo"] == REPO
    # A merge patch: nested objects merge, the rest of `container` stays.
    assert doc["container"] == {**MANIFEST["container"], "env": {"A": "1"}}
    entry = entry_from_builtins(doc)
    assert entry.mode == "self" and entry.verify.health_url == MANIFEST["health_url"]
    # null removes: back to the entry's default
    _, doc = manifest_to_entry(MANIFEST, {"repo": REPO, "container": {"volumes": None}})
    assert entry_from_builtins(doc).container.volumes == []


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"server": "local"}, "name must match"),
        ({"name": "Bad_Name"}, "name must match"),
        ({"name": "x", "health_url": "http://a/", "verify": {"health_url": "http://b/"}}, "twice"),
        ({"name": "x", "health_url": "http://a/", "verify": []}, "verify must be an object"),
    ],
)
def test_manifest_errors_say_what_is_wrong(manifest: dict, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        manifest_to_entry(manifest, {"repo": REPO})


def test_manifest_must_be_a_json_object() -> None:
    assert parse_manifest(b'{"name": "x"}') == {"name": "x"}
    for raw in (b"[1]", b"{", b'"x"'):
        with pytest.raises(ManifestError):
            parse_manifest(raw)


def _repo_with_manifest(tmp: Path, manifest: dict | None) -> Path:
    bare, work = tmp / "app.git", tmp / "work"
    git(tmp, "init", "-q", "--bare", "--initial-branch=main", str(bare))
    git(tmp, "init", "-q", "--initial-branch=main", str(work))
    (work / "README").write_text("an app\n")
    if manifest is not None:
        (work / "kua.json").write_text(json.dumps(manifest))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "app")
    git(work, "push", "-q", str(bare), "HEAD:refs/heads/main")
    return bare


async def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KUA_URL", None)
    env.pop("KUA_TOKEN", None)
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kuadeploy", "apps", "import-manifest", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


async def test_import_manifest_reads_the_repository_and_registers(tmp_path: Path) -> None:
    manifest = {"name": "web", "server": "local", "health_url": "http://127.0.0.1:8081/h"}
    bare = _repo_with_manifest(tmp_path, manifest)
    async with running(make_config(tmp_path / "data")) as api:
        client = ["--url", api.base, "--token", TOKENS["admin"]]
        done = await _cli(str(bare), *client)
        assert done.returncode == 0, done.stderr
        created = json.loads(done.stdout)
        assert created["app"] == "web" and created["version"] == 1
        assert created["entry"]["repo"] == str(bare)  # where the manifest was read
        assert created["entry"]["verify"]["health_url"] == manifest["health_url"]

        again = await _cli(str(bare), *client)  # create-only unless --replace
        assert again.returncode == 2 and "--replace" in again.stderr, again.stderr

        patch = json.dumps({"branch": "release", "keep_releases": 3})
        dry = await _cli(str(bare), "--replace", "--dry-run", "--set", patch, *client)
        assert dry.returncode == 0, dry.stderr
        ops = {(op["op"], op["path"]) for op in json.loads(dry.stdout)["diff"]}
        assert ops == {("replace", "/branch"), ("replace", "/keep_releases")}
        _, now, _ = await api.call("GET", "/api/v1/apps/web")
        assert now["version"] == 1  # a dry run writes nothing

        replaced = await _cli(str(bare), "--replace", "--set", patch, *client)
        assert replaced.returncode == 0, replaced.stderr
        assert json.loads(replaced.stdout)["entry"]["branch"] == "release"

        bad = await _cli(str(bare), "--name", "other", "--set", '{"server": "mars"}', *client)
        assert bad.returncode == 2 and "$.server" in bad.stderr, bad.stderr


async def test_import_manifest_from_a_file_and_the_errors(tmp_path: Path) -> None:
    bare = _repo_with_manifest(tmp_path, None)
    async with running(make_config(tmp_path / "data")) as api:
        client = ["--url", api.base, "--token", TOKENS["admin"]]
        missing = await _cli(str(bare), *client)
        assert missing.returncode == 2 and "no kua.json on branch main" in missing.stderr

        path = tmp_path / "kua.json"
        path.write_text(json.dumps({**MANIFEST, "container": {"name": "kuadeploy"}}))
        done = await _cli(REPO, "--file", str(path), *client)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["entry"]["mode"] == "self"

        weak = await _cli(REPO, "--file", str(path), "--url", api.base, "--token", "t-reader")
        assert weak.returncode == 2 and "403" in weak.stderr
    no_server = await _cli(REPO, "--file", str(path))
    assert no_server.returncode == 2 and "--url" in no_server.stderr


@pytest.mark.parametrize("raw", [b'{"name": "w\xff"}', b"[" * 100_000], ids=["utf8", "deep"])
def test_a_manifest_not_utf8_or_nested_too_deep_is_a_manifest_error(raw: bytes) -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(raw)
