"""Build contexts honour .dockerignore exactly as the docker CLI does: the same files
reach `COPY . …`, so the layer is the very one the CLI's build made (cache hit)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kuadeploy.adapters.docker import Engine
from kuadeploy.adapters.dockerignore import context_paths, excluded, parse

DOCKERFILE = "FROM scratch\nCOPY . /ctx/\n"

CASES = {
    "allow-list": (
        "# only what the image needs\n*\n!pyproject.toml\n!pkg/\n**/__pycache__\n"
        "*.egg-info\n!docs/keep.md\n",
        [
            "pyproject.toml",
            "README.md",
            "pkg/a.py",
            "pkg/__pycache__/a.pyc",
            "pkg/sub/b.py",
            "pkg/sub/__pycache__/b.pyc",
            "x.egg-info/PKG-INFO",
            "docs/keep.md",
            "docs/other.md",
        ],
    ),
    "deny-list": (
        "secret*\n!secret-ok.txt\n/tmp\nsub/**/*.tmp\n  build/  \n*/cache\nfile?.log\n",
        [
            "secret.key",
            "secret-ok.txt",
            "tmp/x",
            "a/tmp/kept",
            "sub/one.tmp",
            "sub/deep/er/two.tmp",
            "sub/keep.txt",
            "build/out.bin",
            "a/cache/c",
            "a/b/cache/kept",
            "file1.log",
            "file10.log",
            "main.py",
        ],
    ),
}


def _make(root: Path, ignore: str, files: list[str]) -> Path:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"{rel}\n")
    (root / ".dockerignore").write_text(ignore)
    (root / "Dockerfile").write_text(DOCKERFILE)
    return root


def test_patterns_follow_the_cli_rules() -> None:
    patterns = parse(CASES["deny-list"][0])
    assert [p.text for p in patterns][:3] == ["secret*", "secret-ok.txt", "tmp"]
    assert excluded("secret.key", patterns) and not excluded("secret-ok.txt", patterns)
    assert excluded("tmp/x", patterns) and not excluded("a/tmp/kept", patterns)
    assert excluded("sub/one.tmp", patterns) and excluded("sub/deep/er/two.tmp", patterns)
    assert excluded("build/out.bin", patterns) and excluded("a/cache/c", patterns)
    assert not excluded("a/b/cache/kept", patterns)
    assert excluded("file1.log", patterns) and not excluded("file10.log", patterns)
    assert not excluded("main.py", patterns)


def test_context_keeps_the_dockerfile_and_descends_only_for_exceptions(tmp_path: Path) -> None:
    root = _make(tmp_path, *CASES["allow-list"])
    sent = list(context_paths(root))
    assert "Dockerfile" in sent and ".dockerignore" in sent  # always sent, as the CLI does
    assert "docs/keep.md" in sent and "docs" not in sent  # re-included below an excluded dir
    assert "pkg/sub/b.py" in sent and "pkg/sub/__pycache__" not in sent
    assert "README.md" not in sent and not any(p.startswith("x.egg-info") for p in sent)


@pytest.mark.parametrize("case", sorted(CASES))
async def test_context_is_the_clis_layer_for_layer(
    docker_a: str, tmp_path: Path, case: str
) -> None:
    root = _make(tmp_path, *CASES[case])
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    tag = f"kua-ignore-test:{case}"
    cli = subprocess.run(
        ["docker", "--host", docker_a, "build", "-q", "-t", tag, str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    try:
        lines: list[str] = []
        async with Engine(docker_a) as engine:
            ours = await engine.build(root, tag=f"{tag}-ours", on_log=lines.append)
        assert ours == cli.stdout.strip(), "\n".join(lines)  # every step from the cache
    finally:
        subprocess.run(
            ["docker", "--host", docker_a, "rmi", "-f", tag, f"{tag}-ours"], capture_output=True
        )
