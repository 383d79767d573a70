"""Webhook deliveries built the way Forgejo and Gitea build them.

Followed from the forge's source:
- services/webhook/shared/payloader.go `AddDefaultHeaders`: X-Forgejo-*, X-Gitea-*,
  X-Gogs-* Delivery/Event/Event-Type/Signature, X-Hub-Signature (sha1=),
  X-Hub-Signature-256 (sha256=), X-GitHub-*; the signatures are lowercase hex HMACs
  of the payload text, "" when the hook has no secret. Gitea itself sends no
  X-Forgejo-* headers.
- services/webhook/default.go `NewRequest`: the body is the payload text
  (application/json) or `payload=<url.Values.Encode>` (x-www-form-urlencoded); the
  signature covers the payload text either way. A Forgejo-type hook re-marshals a push
  through map[string]any to add `compare` (so keys come out sorted); a Gitea-type hook
  does the same to create/delete payloads to shorten `ref`.
- modules/structs/hook.go: payloads are `json.MarshalIndent(p, "", "  ")` in struct
  field order, with Go's HTML escaping of <, >, &.
- routers/web/repo/setting/webhook.go `WebhookTest`: the test delivery is a push of the
  default branch with before == after (the branch head, or all zeros when empty).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

ZERO40 = "0" * 40
ZERO64 = "0" * 64
TIME = "2025-03-14T09:26:53+01:00"
NEVER = "0001-01-01T00:00:00Z"


def go_json(obj: Any, sort_keys: bool = False) -> bytes:
    """encoding/json.MarshalIndent(obj, "", "  "): Go escapes <, >, & and U+2028/9."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=sort_keys)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(char, escaped)
    return text.encode()


def user(login: str, uid: int = 1) -> dict[str, Any]:
    """api.User, field order of modules/structs/user.go, plus the compat `username`."""
    return {
        "id": uid,
        "login": login,
        "login_name": "",
        "source_id": 0,
        "full_name": login.title(),
        "email": f"{login}@noreply.forge.test",
        "avatar_url": f"https://forge.test/avatars/{login}",
        "html_url": f"https://forge.test/{login}",
        "language": "",
        "is_admin": False,
        "last_login": NEVER,
        "created": TIME,
        "restricted": False,
        "active": False,
        "prohibit_login": False,
        "location": "",
        "pronouns": "",
        "website": "",
        "description": "",
        "visibility": "public",
        "followers_count": 0,
        "following_count": 0,
        "starred_repos_count": 0,
        "username": login,
    }


@dataclass
class ForgeRepo:
    """A repository on the pretend forge (only its JSON shape is pretended)."""

    full_name: str = "kua/web"
    base: str = "https://forge.test"
    ssh: str = "git@forge.test"
    default_branch: str = "main"
    object_format: str = "sha1"
    owner: dict[str, Any] = field(default_factory=lambda: user("kua", 2))

    @property
    def html_url(self) -> str:
        return f"{self.base}/{self.full_name}"

    @property
    def clone_url(self) -> str:
        return f"{self.html_url}.git"

    @property
    def ssh_url(self) -> str:
        return f"{self.ssh}:{self.full_name}.git"

    def json(self) -> dict[str, Any]:
        """api.Repository in the field order of modules/structs/repo.go."""
        name = self.full_name.split("/")[-1]
        return {
            "id": 7, "owner": self.owner, "name": name, "full_name": self.full_name,
            "description": "a web app", "empty": False, "private": True, "fork": False,
            "template": False, "parent": None, "mirror": False, "size": 42,
            "language": "", "languages_url": f"{self.base}/api/v1/repos/{self.full_name}/languages",
            "html_url": self.html_url, "url": f"{self.base}/api/v1/repos/{self.full_name}",
            "link": "", "ssh_url": self.ssh_url, "clone_url": self.clone_url,
            "original_url": "", "website": "", "stars_count": 0, "forks_count": 0,
            "watchers_count": 1, "open_issues_count": 0, "open_pr_counter": 0,
            "release_counter": 0, "default_branch": self.default_branch, "archived": False,
            "created_at": TIME, "updated_at": TIME, "archived_at": "1970-01-01T00:00:00Z",
            "permissions": {"admin": True, "push": True, "pull": True},
            "has_issues": True,
            "internal_tracker": {"enable_time_tracker": True,
                                 "allow_only_contributors_to_track_time": True,
                                 "enable_issue_dependencies": True},
            "has_wiki": True, "has_wiki_contents": False, "wiki_branch": "main",
            "wiki_ssh_url": f"{self.ssh}:{self.full_name}.wiki.git",
            "wiki_clone_url": f"{self.html_url}.wiki.git", "globally_editable_wiki": False,
            "has_pull_requests": True, "has_projects": True, "has_releases": True,
            "has_packages": True, "has_actions": False, "ignore_whitespace_conflicts": False,
            "allow_merge_commits": True, "allow_rebase": True, "allow_rebase_explicit": True,
            "allow_squash_merge": True, "allow_fast_forward_only_merge": True,
            "allow_rebase_update": True, "default_delete_branch_after_merge": False,
            "default_merge_style": "merge", "default_allow_maintainer_edit": False,
            "default_update_style": "merge", "avatar_url": "", "internal": False,
            "mirror_interval": "", "object_format_name": self.object_format,
            "mirror_updated": NEVER, "repo_transfer": None, "topics": [],
        }  # fmt: skip

    def commit(self, sha: str, message: str = "change <b> & ünïcode") -> dict[str, Any]:
        """api.PayloadCommit."""
        person = {"name": "Kua Test", "email": "test@kua.invalid", "username": ""}
        return {
            "id": sha,
            "message": message + "\n",
            "url": f"{self.html_url}/commit/{sha}",
            "author": person,
            "committer": person,
            "verification": None,
            "timestamp": TIME,
            "added": [],
            "removed": [],
            "modified": ["config"],
        }

    def push(
        self,
        after: str,
        before: str | None = None,
        ref: str = "refs/heads/main",
        pusher: str = "kavi",
        commits: list[str] | None = None,
    ) -> dict[str, Any]:
        """api.PushPayload as services/webhook/notifier.go `PushCommits` fills it."""
        zero = ZERO64 if len(after) == 64 else ZERO40
        before = zero if before is None else before
        shas = [after] if commits is None else commits  # newest first, capped by the forge
        listed = [self.commit(s) for s in shas if s != zero]
        return {
            "ref": ref,
            "before": before,
            "after": after,
            "compare_url": f"{self.html_url}/compare/{before[:10]}...{after[:10]}",
            "commits": listed,
            "total_commits": len(listed),
            "head_commit": listed[0] if listed else None,
            "repository": self.json(),
            "pusher": user(pusher),
            "sender": user(pusher),
        }

    def test_push(self, head: str | None) -> dict[str, Any]:
        """What the "Test delivery" button sends: before == after == the default branch
        head, all zeros when the repository is empty."""
        sha = head or (ZERO64 if self.object_format == "sha256" else ZERO40)
        payload = self.push(sha, before=sha, ref=f"refs/heads/{self.default_branch}")
        commit = self.commit(sha, "This is a fake commit")
        return {**payload, "commits": [commit], "total_commits": 1, "head_commit": commit}

    def create(self, ref: str, sha: str, ref_type: str = "branch") -> dict[str, Any]:
        return {"sha": sha, "ref": ref, "ref_type": ref_type, "repository": self.json(),
                "sender": user("kavi")}  # fmt: skip

    def delete(self, ref: str, ref_type: str = "branch") -> dict[str, Any]:
        return {"ref": ref, "ref_type": ref_type, "pusher_type": "user",
                "repository": self.json(), "sender": user("kavi")}  # fmt: skip

    def release(self, tag: str) -> dict[str, Any]:
        release = {"id": 3, "tag_name": tag, "target_commitish": "main", "name": tag,
                   "body": "", "draft": False, "prerelease": False}  # fmt: skip
        return {"action": "published", "release": release, "repository": self.json(),
                "sender": user("kavi")}  # fmt: skip


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    uuid: str
    payload_text: bytes  # what was signed


def _short_ref(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def deliver(
    event: str,
    payload: dict[str, Any],
    secret: str,
    *,
    hook: str = "forgejo",
    content_type: str = "json",
    delivery_id: str | None = None,
    authorization: str | None = None,
) -> Delivery:
    """The request a hook of type `hook` ("forgejo" or "gitea" as hook types on Forgejo;
    "gitea-server" for Gitea itself, which has no X-Forgejo-* headers) sends."""
    if hook == "forgejo" and event == "push":
        text = go_json({**payload, "compare": payload["compare_url"]}, sort_keys=True)
    elif hook == "gitea" and event in ("create", "delete"):
        text = go_json({**payload, "ref": _short_ref(payload["ref"])}, sort_keys=True)
    else:
        text = go_json(payload)
    if content_type == "json":
        body, ctype = text, "application/json"
    else:
        body = b"payload=" + quote_plus(text.decode(), safe="").encode()
        ctype = "application/x-www-form-urlencoded"
    sig1 = sig256 = ""
    if secret:
        sig1 = hmac.new(secret.encode(), text, hashlib.sha1).hexdigest()
        sig256 = hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()
    delivery_id = delivery_id or str(uuid.uuid4())
    families = ("Gitea", "Gogs") if hook == "gitea-server" else ("Forgejo", "Gitea", "Gogs")
    headers = {"Content-Type": ctype}
    for family in families:
        headers[f"X-{family}-Delivery"] = delivery_id
        headers[f"X-{family}-Event"] = event
        headers[f"X-{family}-Event-Type"] = event
        headers[f"X-{family}-Signature"] = sig256
    headers["X-Hub-Signature"] = f"sha1={sig1}"
    headers["X-Hub-Signature-256"] = f"sha256={sig256}"
    headers["X-GitHub-Delivery"] = delivery_id
    headers["X-GitHub-Event"] = event
    headers["X-GitHub-Event-Type"] = event
    if authorization:
        headers["Authorization"] = authorization
    return Delivery(headers, body, delivery_id, text)


def only_signature(d: Delivery, keep: str) -> Delivery:
    """The delivery with one signature header style left (the others removed)."""
    names = ("X-Forgejo-Signature", "X-Gitea-Signature", "X-Gogs-Signature",
             "X-Hub-Signature", "X-Hub-Signature-256")  # fmt: skip
    headers = {k: v for k, v in d.headers.items() if k not in names or k == keep}
    return Delivery(headers, d.body, d.uuid, d.payload_text)
