"""The webhook's functional core: payload schema, signatures, repo matching, decisions.

Payloads are the forge's own JSON text (tests/forge.py), parsed by our schema.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import quote_plus

import msgspec
import pytest
from multidict import CIMultiDict

from kuadeploy import events as ev
from kuadeploy.commands.webhooks import Delivery, answer_of, decide_delivery
from kuadeploy.config import WebhookConfig
from kuadeploy.entry import AppEntry
from kuadeploy.forge import payload as wire
from kuadeploy.forge import signature as sig
from kuadeploy.forge.match import apps_of_repo, repo_key
from kuadeploy.projector import State, fold
from tests.forge import ZERO40, ZERO64, ForgeRepo, deliver, go_json


def state_with(*items: tuple[str, ev.EventData]) -> State:
    state, versions = State(), {}
    for seq, (stream, data) in enumerate(items, 1):
        versions[stream] = versions.get(stream, 0) + 1
        env = ev.envelope(
            data,
            seq=seq,
            ts=f"2025-01-01T00:00:{seq:02d}.000000Z",
            stream=stream,
            version=versions[stream],
            actor="t",
        )
        fold(state, env)
    return state


def app(name: str = "web", branch: str = "main", forge_repo: str | None = "kua/web"):
    entry = AppEntry(
        server="local", repo="https://forge.test/kua/web.git", branch=branch, forge_repo=forge_repo
    )
    return f"app/{name}", ev.AppRegistered(app=name, entry=entry)


def verified(sha: str, deploy: str = "d-1", name: str = "web"):
    return [
        (f"deploy/{deploy}", ev.DeployRequested(app=name, trigger="api", sha=sha)),
        (f"deploy/{deploy}", ev.DeployStarted(app=name, sha=sha)),
        (f"deploy/{deploy}", ev.DeploySucceeded(app=name, sha=sha, image_id="sha256:" + "a" * 64)),
    ]


def delivery(event: str, payload: dict, hook: str = "forgejo") -> Delivery:
    text = deliver(event, payload, "s", hook=hook).payload_text
    return Delivery(secrets.token_hex(8), event, "forgejo", "default", wire.parse(event, text))


def ids():
    n = iter(range(1, 100))
    return lambda: f"new-{next(n)}"


# --- decisions ----------------------------------------------------------------------


def test_sha256_push_requests_exactly_the_64_hex_after():
    after = secrets.token_hex(32)
    d = delivery("push", ForgeRepo(object_format="sha256").push(after, before=ZERO64))
    decision = decide_delivery(d, state_with(app()), ids())
    record, request = decision.events
    assert record.stream == f"webhook/{d.id}" and record.expected_version == 0
    assert isinstance(record.data, ev.WebhookReceived) and record.data.deploy_ids == ["new-1"]
    assert request.stream == "deploy/new-1" and request.expected_version == 0
    assert (request.data.sha, request.data.trigger, request.data.ref) == (after, "webhook", "main")
    assert (request.data.delivery, request.data.pusher) == (d.id, "kavi")
    assert decision.answer.body() == {"deploy_ids": ["new-1"], "ignored": []}
    assert decision.answer.status == 202


def test_uppercase_ids_are_accepted_and_recorded_lowercase():
    after = secrets.token_hex(20)
    d = delivery("push", ForgeRepo().push(after.upper()))
    _, request = decide_delivery(d, state_with(app()), ids()).events
    assert request.data.sha == after


@pytest.mark.parametrize("zero", [ZERO40, ZERO64])
def test_old_style_deletion_and_empty_test_delivery_in_both_id_sizes(zero):
    deleted = delivery("push", ForgeRepo().push(zero, before=secrets.token_hex(len(zero) // 2)))
    decision = decide_delivery(deleted, state_with(app()), ids())
    assert [type(e.data) for e in decision.events] == [ev.WebhookIgnored]
    assert decision.answer.body()["ignored"] == [
        {"reason": "branch main was deleted: nothing to deploy"}
    ]
    fmt = "sha256" if len(zero) == 64 else "sha1"
    empty = delivery("push", ForgeRepo(object_format=fmt).test_push(None))
    [skip] = decide_delivery(empty, state_with(app()), ids()).answer.ignored
    assert skip.reason.startswith("test delivery of an empty repository")


def test_test_delivery_and_replay_of_the_verified_release_deploy_nothing():
    head = secrets.token_hex(20)
    state = state_with(app(), *verified(head, "d-7"))
    test = decide_delivery(delivery("push", ForgeRepo().test_push(head)), state, ids())
    assert len(test.events) == 1 and test.answer.status == 200
    assert test.answer.body()["ignored"] == [
        {
            "app": "web",
            "reason": f"test delivery: {head} is already the verified release",
            "deploy_id": "d-7",
        }
    ]
    replay = decide_delivery(delivery("push", ForgeRepo().push(head)), state, ids())
    [skip] = replay.answer.ignored
    assert (skip.app, skip.deploy_id) == ("web", "d-7")
    assert skip.reason == f"{head} is already the verified release"
    assert answer_of(replay.events[0].data) == replay.answer


def test_test_delivery_of_a_head_not_yet_deployed_deploys_it():
    head = secrets.token_hex(20)
    state = state_with(app(), *verified(secrets.token_hex(20)))
    decision = decide_delivery(delivery("push", ForgeRepo().test_push(head)), state, ids())
    assert decision.answer.deploy_ids == ["new-1"] and decision.events[1].data.sha == head


def test_a_new_deploy_supersedes_the_queued_one_in_the_same_append():
    first, second = secrets.token_hex(20), secrets.token_hex(20)
    state = state_with(
        app(), ("deploy/q", ev.DeployRequested(app="web", trigger="webhook", sha=first))
    )
    decision = decide_delivery(delivery("push", ForgeRepo().push(second)), state, ids())
    streams = [(e.stream, type(e.data).__name__, e.expected_version) for e in decision.events]
    assert streams[1:] == [
        ("deploy/new-1", "DeployRequested", 0),
        ("deploy/q", "DeploySuperseded", 1),
    ]


def applied(state: State, decision) -> State:
    """`state` after the decision's events were appended."""
    for e in decision.events:
        seq = state.seq + 1
        ts = f"2025-01-01T00:01:{seq % 60:02d}.000000Z"
        fold(state, ev.envelope(e.data, seq=seq, ts=ts, stream=e.stream, version=1, actor="t"))
    return state


def test_a_late_or_replayed_older_push_is_refused_and_says_why():
    base, b, c = (secrets.token_hex(20) for _ in range(3))
    forge = ForgeRepo()
    state = state_with(app(), app("api"), *verified(base))
    newer = decide_delivery(delivery("push", forge.push(c, before=b)), state, ids())
    state = applied(state, newer)
    late = decide_delivery(delivery("push", forge.push(b, before=base)), state, ids())
    assert late.answer.status == 200 and len(late.events) == 1
    why = f"{b} is older than a push already received (the branch went on to {c})"
    assert late.answer.body()["ignored"] == [
        {"app": "api", "reason": why},
        {"app": "web", "reason": why},
    ]
    assert isinstance(late.events[0].data, ev.WebhookIgnored)
    state = applied(state, late)  # a refused push teaches nothing: still refused again
    again = decide_delivery(delivery("push", forge.push(b, before=base)), state, ids())
    assert again.answer.ignored == late.answer.ignored
    # another branch, and a force-push back to the older commit, are new pushes
    other = decide_delivery(delivery("push", forge.push(b, base, "refs/heads/x")), state, ids())
    assert not any(s.reason.startswith(b) for s in other.answer.ignored)
    state = applied(state, decide_delivery(delivery("push", forge.push(b, before=c)), state, ids()))
    back = decide_delivery(delivery("push", forge.push(c, before=b)), state, ids())
    assert back.answer.deploy_ids == ["new-1", "new-2"]


def test_gitea_hooks_short_refs_on_create_and_delete_are_ignored_by_name():
    d = delivery("delete", ForgeRepo().delete("refs/heads/feature"), hook="gitea")
    assert d.payload.ref == "feature"
    [skip] = decide_delivery(d, state_with(app()), ids()).answer.ignored
    assert skip.reason == "delete event (branch feature): deletions never deploy"
    tag = delivery("create", ForgeRepo().create("refs/tags/v2", ZERO40, "tag"), hook="gitea")
    [skip] = decide_delivery(tag, state_with(app()), ids()).answer.ignored
    assert skip.reason == "create event (tag v2): deploys come from push events"


def test_a_removed_app_is_not_matched():
    state = state_with(app(), ("app/web", ev.AppRemoved(app="web")))
    decision = decide_delivery(delivery("push", ForgeRepo().push(ZERO40[:-1] + "1")), state, ids())
    assert decision.answer.body()["ignored"] == [
        {"reason": "repository kua/web is not tracked by any app"}
    ]


# --- payload schema -----------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"after": "abc123"},  # too short
        {"after": "g" * 40},  # not hex
        {"before": "0" * 50},  # neither 40 nor 64
        {"ref": ""},
        {"repository": None},
    ],
)
def test_push_payloads_that_do_not_fit_the_schema_are_rejected(change):
    payload = {**ForgeRepo().push(secrets.token_hex(20)), **change}
    with pytest.raises(msgspec.ValidationError):
        wire.parse("push", go_json(payload))


def test_unknown_fields_are_skipped_and_other_events_need_no_repository():
    payload = wire.parse("package", b'{"action": "created", "package": {"id": 1}}')
    assert isinstance(payload, wire.OtherPayload) and payload.repository is None
    assert wire.claimed_repo(b"not json") is None
    assert wire.claimed_repo(b'{"repository": {"full_name": 7}}') is None


# --- matching -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://forge.test/kua/web.git",
        "https://forge.test/kua/web",
        "https://forge.test/Kua/Web/",
        "http://user:token@forge.test:3000/kua/web.git",
        "ssh://git@forge.test:2222/kua/web.git",
        "git@forge.test:kua/web.git",
        "forge.test:kua/web",
    ],
)
def test_repo_urls_of_one_repository_normalise_alike(url):
    assert repo_key(url) == "forge.test/kua/web"


def test_local_paths_and_other_repos_do_not_collide():
    assert repo_key("/srv/git/kua/web.git") == repo_key("file:///srv/git/kua/web")
    assert repo_key("/srv/git/kua/web.git") != repo_key("https://forge.test/kua/web.git")
    assert repo_key("https://forge.test/kua/web2.git") != repo_key("https://forge.test/kua/web")


def test_apps_of_a_repo_by_forge_repo_or_by_url():
    base = "https://forge.test/kua/web"
    repo = wire.Repository("kua/web", f"{base}.git", "git@forge.test:kua/web.git", base)
    entries = {
        "by-name": AppEntry(server="s", repo="/elsewhere", branch="main", forge_repo="KUA/web"),
        "by-ssh": AppEntry(server="s", repo="ssh://git@forge.test/kua/web.git", branch="dev"),
        "other": AppEntry(
            server="s", repo="https://forge.test/kua/api.git", branch="main", forge_repo="kua/api"
        ),
    }
    assert list(apps_of_repo(entries, repo)) == ["by-name", "by-ssh"]


# --- signatures ---------------------------------------------------------------------


def test_signature_headers_of_each_style_are_read_and_malformed_ones_skipped():
    mac = hmac.new(b"k", b"body", hashlib.sha256)
    headers = CIMultiDict(
        {
            "x-forgejo-signature": mac.hexdigest(),
            "X-Gitea-Signature": "not hex",
            "X-Hub-Signature-256": "sha256=" + mac.hexdigest().upper(),
        }
    )
    assert sig.signatures(headers) == [mac.digest(), mac.digest()]
    assert sig.signatures(CIMultiDict({"X-Hub-Signature-256": mac.hexdigest()})) == []
    assert sig.signatures(CIMultiDict({"X-Hub-Signature": "sha1=" + "0" * 40})) == []


def test_secrets_are_tried_repo_first_then_default_and_empty_ones_never():
    config = WebhookConfig(secret="default", repos={"Kua/Web": "own", "kua/api": ""})
    assert sig.candidate_secrets(config, "kua/web") == [("repo", "own"), ("default", "default")]
    assert sig.candidate_secrets(config, "kua/api") == [("default", "default")]
    assert sig.candidate_secrets(config, None) == [("default", "default")]
    assert not sig.configured(WebhookConfig(secret="", repos={"a/b": ""}))
    body = b'{"x": 1}'
    own = hmac.new(b"own", body, hashlib.sha256).digest()
    assert sig.verify(body, [own], sig.candidate_secrets(config, "kua/web")) == "repo"
    assert sig.verify(body, [own], sig.candidate_secrets(config, "kua/api")) is None
    assert sig.verify(body + b" ", [own], sig.candidate_secrets(config, "kua/web")) is None


def test_form_payload_is_the_exact_signed_text():
    text = go_json({"message": "a+b = c & d <e> 100% ü\n", "n": [1, 2]})
    body = b"payload=" + quote_plus(text.decode(), safe="").encode()
    assert sig.form_payload(body) == text
    assert sig.form_payload(b"other=1&payload=" + body[8:]) == text
    assert sig.form_payload(b"other=1") is None


def test_authorization_is_compared_only_when_configured():
    assert sig.authorization_ok(WebhookConfig(), None)
    config = WebhookConfig(authorization="Basic abc")
    assert sig.authorization_ok(config, "Basic abc")
    assert not sig.authorization_ok(config, "Basic abd")
    assert not sig.authorization_ok(config, None)
