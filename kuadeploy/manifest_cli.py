"""`kuadeploy apps import-manifest`: register an app from its repository's kua.json.

The CLI, not the server, reads the manifest (registering never contacts a
repository: DESIGN §5), then PUTs the entry to a running server as any admin
client would (kuadeploy.client) — create-only unless --replace, a diff only with
--dry-run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kuadeploy.adapters import git
from kuadeploy.client import Client, ClientError
from kuadeploy.manifest import MANIFEST_FILE, ManifestError, manifest_to_entry, parse_manifest

DEFAULT_BRANCH = "main"


class ImportFailed(Exception):
    """One line for the user."""


def read_from_repo(repo: str, branch: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="kua-manifest-") as tmp:
        try:
            mirror = git.Mirror.sync(repo, Path(tmp) / "mirror.git")
            raw = mirror.read_file(mirror.branch_head(branch), MANIFEST_FILE)
        except git.GitError as exc:
            raise ImportFailed(str(exc)) from None
    if raw is None:
        raise ImportFailed(f"{repo} has no {MANIFEST_FILE} on branch {branch}")
    return raw


def importer_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {"repo": args.repo}
    if args.branch:
        values["branch"] = args.branch
    if args.set:
        try:
            extra = json.loads(args.set)
        except json.JSONDecodeError as exc:
            raise ImportFailed(f"--set is not JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise ImportFailed("--set must be a JSON object (a merge patch of the entry)")
        values.update(extra)
    return values


def put(client: Client, app: str, entry: dict, replace: bool, dry_run: bool) -> Any:
    path = f"/api/v1/apps/{quote(app, safe='')}" + ("?dry_run=1" if dry_run else "")
    headers = {} if replace else {"If-None-Match": "*"}
    try:
        return client.request("PUT", path, entry, headers)
    except ClientError as exc:
        hint = " (already registered: --replace to overwrite)" if "(HTTP 412)" in str(exc) else ""
        raise ImportFailed(f"{exc}{hint}") from None


def cmd_import_manifest(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("KUA_URL")
    token = args.token or os.environ.get("KUA_TOKEN")
    try:
        if not url:
            raise ImportFailed("a running server is needed: --url and --token (KUA_URL, KUA_TOKEN)")
        client = Client(url, token)
        importer = importer_values(args)
        if args.file:
            manifest = parse_manifest(Path(args.file).read_bytes())
        else:
            branch = args.branch or DEFAULT_BRANCH
            manifest = parse_manifest(read_from_repo(args.repo, branch))
            if "branch" not in manifest:  # deploy the branch the manifest came from
                importer.setdefault("branch", branch)
        name, entry = manifest_to_entry(manifest, importer)
        answer = put(client, args.name or name, entry, args.replace, args.dry_run)
    except (ImportFailed, ManifestError, ClientError, OSError) as exc:
        print(f"kuadeploy: import-manifest: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2, sort_keys=True))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("apps", help="registry entries")
    apps = group.add_subparsers(dest="apps", required=True)
    imp = apps.add_parser(
        "import-manifest", help=f"register an app from its repository's {MANIFEST_FILE}"
    )
    imp.add_argument("repo", help="the repository URL (or path): the entry's repo")
    imp.add_argument("--branch", help=f"branch to read {MANIFEST_FILE} from and deploy")
    imp.add_argument("--file", help=f"read this {MANIFEST_FILE} instead of the repository's")
    imp.add_argument("--name", help="app name (default: the manifest's name)")
    imp.add_argument("--set", help='JSON merge patch over the entry, e.g. \'{"server":"b"}\'')
    imp.add_argument("--replace", action="store_true", help="replace an existing entry")
    imp.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    imp.add_argument("--url", help="a running server ($KUA_URL)")
    imp.add_argument("--token", help="an admin token ($KUA_TOKEN)")
    imp.set_defaults(func=cmd_import_manifest)
