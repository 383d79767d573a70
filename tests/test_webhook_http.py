"""POST /webhook/forgejo and /webhook/gitea against a real server with a real ledger.

Deliveries are built as Forgejo builds them (tests/forge.py). Apps point at a git
endpoint on 127.0.0.1 that never answers, so every deploy a delivery requests stays
in its fetch step: queued or running for as long as a test looks at it.
"""

from __future__ import annotations

import hmac
import secrets

import pytest

from kuadeploy.config import WebhookConfig
from tests.api_support import make_config, running
from tests.forge import ZERO40, ZERO64, ForgeRepo, deliver, only_signature
from tests.webhook_support import (
    SECRET,
    post,
    rejected_count,
    requested,
    stalled_forge,  # noqa: F401  (fixture)
    webhook_events,
)

PROBLEM = "application/problem+json"
REPO_SECRET = "web-only-secret-81d2"


def sha1() -> str:
    return secrets.token_hex(20)


@pytest.fixture
async def api(tmp_path, stalled_forge):  # noqa: F811
    hooks = WebhookConfig(secret=SECRET, repos={"kua/web": REPO_SECRET})
    async with running(make_config(tmp_path, webhook=hooks)) as client:
        client.forge_url = stalled_forge
        yield client


async def track(api, app: str = "web", branch: str = "main", **entry) -> None:
    doc = {
        "server": "local",
        "repo": f"{api.forge_url}/kua/web.git",
        "branch": branch,
        "forge_repo": "kua/web",
        **entry,
    }
    doc = {k: v for k, v in doc.items() if v is not None}
    status, body, _ = await api.call("PUT", f"/api/v1/apps/{app}", json=doc)
    assert status == 201, body


async def accepted(api, d, path: str = "/webhook/forgejo") -> dict:
    status, body, elapsed = await post(api, d, path)
    assert status == 202, body
    assert elapsed < 1.0
    return body


async def ignored(api, d, path: str = "/webhook/forgejo") -> list[dict]:
    status, body, elapsed = await post(api, d, path)
    assert status == 200, body
    assert set(body) == {"ignored"} and elapsed < 1.0
    return body["ignored"]


# --- a push to a tracked branch ------------------------------------------------------


async def test_push_deploys_exactly_after_recorded_with_its_delivery_in_one_append(api):
    await track(api)
    before, after = sha1(), sha1()
    d = deliver("push", ForgeRepo().push(after, before=before), SECRET)
    body = await accepted(api, d)
    assert body["ignored"] == [] and len(body["deploy_ids"]) == 1
    status, view, _ = await api.call("GET", f"/api/v1/deploys/{body['deploy_ids'][0]}")
    assert status == 200
    assert (view["app"], view["sha"], view["trigger"]) == ("web", after, "webhook")
    assert (view["delivery"], view["pusher"]) == (d.uuid, "kavi")
    assert view["requested_by"] == "webhook:kua/web"
    [hook] = await webhook_events(api)
    assert hook["type"] == "WebhookReceived" and hook["stream"] == f"webhook/{d.uuid}"
    assert hook["actor"] == "webhook:kua/web"
    data = hook["data"]
    assert data["deploy_ids"] == body["deploy_ids"] and data["after"] == after
    assert (data["before"], data["ref"], data["event"]) == (before, "refs/heads/main", "push")
    assert (data["forge"], data["signed_with"], data["pusher"]) == ("forgejo", "default", "kavi")
    [req] = await requested(api)
    # one append: consecutive seqs, one commit timestamp
    assert req["seq"] == hook["seq"] + 1 and req["ts"] == hook["ts"]


@pytest.mark.parametrize(
    "header", ["X-Forgejo-Signature", "X-Gitea-Signature", "X-Hub-Signature-256"]
)
async def test_each_signature_header_alone_verifies(api, header):
    await track(api)
    d = only_signature(deliver("push", ForgeRepo().push(sha1()), SECRET), header)
    assert len((await accepted(api, d))["deploy_ids"]) == 1


async def test_gitea_delivery_without_forgejo_headers_on_the_gitea_alias(api):
    await track(api)
    d = deliver("push", ForgeRepo().push(sha1()), SECRET, hook="gitea-server")
    assert not any(h.startswith("X-Forgejo") for h in d.headers)
    body = await accepted(api, d, "/webhook/gitea")
    [hook] = await webhook_events(api)
    assert hook["data"]["forge"] == "gitea" and hook["data"]["deploy_ids"] == body["deploy_ids"]


async def test_form_body_with_the_signature_over_the_json_text(api):
    await track(api)
    after = sha1()
    d = deliver("push", ForgeRepo().push(after), SECRET, content_type="form")
    assert d.body.startswith(b"payload=%7B%0A++%22") and b"%5Cu003cb%5Cu003e" in d.body
    body = await accepted(api, d)
    _, view, _ = await api.call("GET", f"/api/v1/deploys/{body['deploy_ids'][0]}")
    assert view["sha"] == after


async def test_repo_secret_and_default_secret_both_verify_but_never_for_another_repo(api):
    await track(api)
    own = deliver("push", ForgeRepo().push(sha1()), REPO_SECRET)
    await accepted(api, own)
    fallback = deliver("push", ForgeRepo().push(sha1()), SECRET)
    await accepted(api, fallback)
    scopes = [e["data"]["signed_with"] for e in await webhook_events(api)]
    assert scopes == ["repo", "default"]
    other = deliver("push", ForgeRepo("kua/api").push(sha1()), REPO_SECRET)
    status, body, _ = await post(api, other)
    assert status == 401 and body["status"] == 401
    assert len(await webhook_events(api)) == 2


async def test_a_repo_secret_never_deploys_another_repo_through_its_urls(tmp_path, stalled_forge):  # noqa: F811
    # The holder of kua/blog's own secret signs a delivery that names kua/blog (as it
    # must) but carries kua/web's URLs: kua/web's apps are matched by URL, not name.
    hooks = WebhookConfig(secret=SECRET, repos={"kua/blog": "blog-only-secret"})
    async with running(make_config(tmp_path, webhook=hooks)) as api:
        api.forge_url = stalled_forge
        await track(api, forge_repo=None)
        await track(api, "web-named", container={"name": "web-named"})
        spoof = ForgeRepo("kua/blog", base=stalled_forge).push(sha1())
        web = ForgeRepo("kua/web", base=stalled_forge)
        spoof["repository"].update(clone_url=web.clone_url, html_url=web.html_url)
        skips = await ignored(api, deliver("push", spoof, "blog-only-secret"))
        assert skips == [{"reason": "repository kua/blog is not tracked by any app"}]
        assert await requested(api) == []


# --- what never reaches the ledger ---------------------------------------------------


async def unverified(api, d, reason: str) -> None:
    seen = await rejected_count(api, reason)
    head = await api.head_seq()
    status, body, resp = await api.call(
        "POST", "/webhook/forgejo", role=None, data=d.body, headers=d.headers
    )
    assert status == 401 and resp.content_type == PROBLEM and body["status"] == 401, body
    assert await api.head_seq() == head and await webhook_events(api) == []
    assert await rejected_count(api, reason) == seen + 1


async def test_body_nested_too_deeply_is_401_when_unsigned_and_400_when_signed(api):
    """The repository a body claims is read before the signature is checked: a body
    nested past the decoder's depth must not turn a stranger's request into a 500."""
    await track(api)
    deep = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    forged = deliver("push", ForgeRepo().push(sha1()), "not-the-secret")
    forged.body = deep
    await unverified(api, forged, "bad_signature")
    signed = only_signature(
        deliver("push", ForgeRepo().push(sha1()), SECRET), "X-Forgejo-Signature"
    )
    signed.headers["X-Forgejo-Signature"] = hmac.new(SECRET.encode(), deep, "sha256").hexdigest()
    status, body, resp = await api.call(
        "POST", "/webhook/forgejo", role=None, data=deep, headers=signed.headers
    )
    assert status == 400 and resp.content_type == PROBLEM, body


async def test_wrong_secret_is_401_and_never_recorded(api):
    await track(api)
    await unverified(
        api, deliver("push", ForgeRepo().push(sha1()), "not-the-secret"), "bad_signature"
    )


async def test_tampered_body_is_401(api):
    await track(api)
    d = deliver("push", ForgeRepo().push(sha1()), SECRET)
    d.body = d.body.replace(b'"login": "kavi"', b'"login": "mallory"')  # signatures unchanged
    assert b"mallory" in d.body
    await unverified(api, d, "bad_signature")


async def test_unsigned_delivery_is_401(api):
    await track(api)
    await unverified(api, deliver("push", ForgeRepo().push(sha1()), ""), "unsigned")


async def test_no_secret_configured_rejects_every_delivery(tmp_path):
    async with running(make_config(tmp_path)) as api:
        for secret in ("", SECRET):
            await unverified(api, deliver("push", ForgeRepo().push(sha1()), secret), "no_secret")


async def test_configured_authorization_header_is_required_as_well(tmp_path, stalled_forge):  # noqa: F811
    hooks = WebhookConfig(secret=SECRET, authorization="Bearer hook-token-77")
    async with running(make_config(tmp_path, webhook=hooks)) as api:
        api.forge_url = stalled_forge
        await track(api)
        d = deliver("push", ForgeRepo().push(sha1()), SECRET)
        await unverified(api, d, "authorization")
        wrong = deliver("push", ForgeRepo().push(sha1()), SECRET, authorization="Bearer nope")
        await unverified(api, wrong, "authorization")
        right = deliver(
            "push", ForgeRepo().push(sha1()), SECRET, authorization="Bearer hook-token-77"
        )
        await accepted(api, right)


async def test_oversized_malformed_and_headerless_deliveries(api):
    await track(api)
    big = deliver("push", ForgeRepo().push(sha1()), SECRET)
    big.body = b" " * (5 * 1024 * 1024 + 1)
    status, _, _ = await post(api, big)
    assert status == 413

    async def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(6):
            yield b" " * (1024 * 1024)

    headers = dict(big.headers)
    async with api.session.post(api.url("/webhook/forgejo"), data=chunks(), headers=headers) as r:
        assert r.status == 413 and r.content_type == PROBLEM
    assert await rejected_count(api, "too_large") == 2

    def signed(text: bytes, **drop) -> object:
        d = deliver("push", ForgeRepo().push(sha1()), SECRET)
        d.body = text
        d.headers = {k: v for k, v in d.headers.items() if k not in drop}
        import hashlib
        import hmac

        digest = hmac.new(SECRET.encode(), text, hashlib.sha256).hexdigest()
        for name in ("X-Forgejo-Signature", "X-Gitea-Signature"):
            d.headers[name] = digest
        d.headers["X-Hub-Signature-256"] = f"sha256={digest}"
        return d

    status, body, _ = await post(api, signed(b'{"ref": "refs/heads/main", '))
    assert status == 400 and "malformed JSON" in body["detail"]
    good = deliver("push", ForgeRepo().push(sha1()), SECRET).payload_text
    status, body, _ = await post(api, signed(good.replace(b'"after": "', b'"after": "zz')))
    assert status == 400 and "after" in body["detail"]
    no_event = signed(good)
    no_event.headers = {k: v for k, v in no_event.headers.items() if not k.endswith("-Event")}
    status, body, _ = await post(api, no_event)
    assert status == 400 and "Event" in body["detail"]
    plain = deliver("push", ForgeRepo().push(sha1()), SECRET)
    plain.headers["Content-Type"] = "text/plain"
    status, body, _ = await post(api, plain)
    assert status == 415
    assert await webhook_events(api) == [] and await requested(api) == []


# --- idempotency -------------------------------------------------------------------


async def test_same_delivery_uuid_gets_the_original_answer_and_appends_nothing(api):
    await track(api)
    d = deliver("push", ForgeRepo().push(sha1()), SECRET)
    first = await accepted(api, d)
    again = await accepted(api, d)
    assert again == first
    assert len(await webhook_events(api)) == 1 and len(await requested(api)) == 1
    tag = deliver("push", ForgeRepo().push(sha1(), ref="refs/tags/v1"), SECRET)
    assert await ignored(api, tag) == await ignored(api, tag)
    assert len(await webhook_events(api)) == 2


async def test_replay_under_a_new_uuid_of_a_queued_or_running_sha_is_no_second_deploy(api):
    await track(api)
    payload = ForgeRepo().push(sha1())
    [deploy_id] = (await accepted(api, deliver("push", payload, SECRET)))["deploy_ids"]
    [skip] = await ignored(api, deliver("push", payload, SECRET))
    assert skip["app"] == "web" and skip["deploy_id"] == deploy_id
    assert skip["reason"].startswith(payload["after"]) and "already" in skip["reason"]
    assert len(await requested(api)) == 1
    kinds = [e["type"] for e in await webhook_events(api)]
    assert kinds == ["WebhookReceived", "WebhookIgnored"]


# --- authenticated, not acted on: 200, recorded --------------------------------------


async def only_ignored_recorded(api, n: int) -> list[dict]:
    events = await webhook_events(api)
    assert len(events) == n and all(e["type"] == "WebhookIgnored" for e in events)
    assert await requested(api) == []
    return events


async def test_tag_push_is_ignored_and_recorded(api):
    await track(api)
    d = deliver("push", ForgeRepo().push(sha1(), ref="refs/tags/v1.2.0", commits=[]), SECRET)
    assert await ignored(api, d) == [
        {"reason": "tag push refs/tags/v1.2.0: only branch pushes deploy"}
    ]
    [event] = await only_ignored_recorded(api, 1)
    assert event["data"]["ref"] == "refs/tags/v1.2.0"


async def test_new_branch_push_deploys_and_its_create_event_is_ignored(api):
    await track(api, branch="release")
    after = sha1()
    push = ForgeRepo().push(after, before=ZERO40, ref="refs/heads/release")
    [deploy_id] = (await accepted(api, deliver("push", push, SECRET)))["deploy_ids"]
    _, view, _ = await api.call("GET", f"/api/v1/deploys/{deploy_id}")
    assert view["sha"] == after
    creates = []
    for hook in ("forgejo", "gitea"):
        create = deliver(
            "create", ForgeRepo().create("refs/heads/release", after), SECRET, hook=hook
        )
        [skip] = await ignored(api, create)
        assert skip["reason"].startswith("create event (branch ")
        creates.append((create.uuid, [skip["reason"]]))
    recorded = [
        (e["data"]["delivery"], [i["reason"] for i in e["data"]["ignored"]])
        for e in await webhook_events(api)
        if e["type"] == "WebhookIgnored" and e["data"]["event"] == "create"
    ]
    assert recorded == creates  # each create delivery recorded, with why it was ignored


async def test_branch_deletion_in_both_styles_is_ignored(api):
    await track(api)
    delete = deliver("delete", ForgeRepo().delete("refs/heads/main"), SECRET)
    [skip] = await ignored(api, delete)
    assert skip == {"reason": "delete event (branch refs/heads/main): deletions never deploy"}
    old_style = deliver("push", ForgeRepo().push(ZERO40, before=sha1(), commits=[]), SECRET)
    [skip] = await ignored(api, old_style)
    assert skip == {"reason": "branch main was deleted: nothing to deploy"}
    await only_ignored_recorded(api, 2)


async def test_release_and_other_events_are_ignored(api):
    await track(api)
    [skip] = await ignored(api, deliver("release", ForgeRepo().release("v1"), SECRET))
    assert skip == {"reason": "release event: only push events deploy"}
    [event] = await only_ignored_recorded(api, 1)
    assert event["data"]["event"] == "release" and event["data"]["repo"] == "kua/web"


async def test_sha256_repository_ids_deploy(api):
    await track(api)
    after = secrets.token_hex(32)
    repo = ForgeRepo(object_format="sha256")
    push = repo.push(after, before=ZERO64)
    [deploy_id] = (await accepted(api, deliver("push", push, SECRET)))["deploy_ids"]
    _, view, _ = await api.call("GET", f"/api/v1/deploys/{deploy_id}")
    assert view["sha"] == after and len(view["sha"]) == 64


async def test_test_delivery_of_an_empty_repo_and_of_a_sha_already_in_flight(api):
    await track(api)
    [skip] = await ignored(api, deliver("push", ForgeRepo().test_push(None), SECRET))
    assert skip == {"reason": "test delivery of an empty repository: no commit to deploy"}
    head = sha1()
    [deploy_id] = (await accepted(api, deliver("push", ForgeRepo().push(head), SECRET)))[
        "deploy_ids"
    ]
    [skip] = await ignored(api, deliver("push", ForgeRepo().test_push(head), SECRET))
    assert skip["deploy_id"] == deploy_id and skip["app"] == "web"
    assert skip["reason"].startswith(f"test delivery: {head} is already ")


async def test_two_apps_on_one_repo_and_branch_get_one_deploy_each(api):
    await track(api, "web")
    await track(api, "web-worker")
    await track(api, "web-staging", branch="staging")
    body = await accepted(api, deliver("push", ForgeRepo().push(sha1()), SECRET))
    assert len(body["deploy_ids"]) == 2
    assert body["ignored"] == [{"app": "web-staging", "reason": "tracks branch staging, not main"}]
    apps = sorted(e["data"]["app"] for e in await requested(api))
    assert apps == ["web", "web-worker"]


async def test_untracked_branch_and_untracked_repo_are_ignored(api):
    await track(api)
    feature = deliver("push", ForgeRepo().push(sha1(), ref="refs/heads/feature"), SECRET)
    assert await ignored(api, feature) == [
        {"app": "web", "reason": "tracks branch main, not feature"}
    ]
    stranger = deliver("push", ForgeRepo("kua/blog").push(sha1()), SECRET)
    assert await ignored(api, stranger) == [
        {"reason": "repository kua/blog is not tracked by any app"}
    ]
    await only_ignored_recorded(api, 2)


async def test_an_app_without_forge_repo_is_matched_by_its_repo_url(api):
    repo = ForgeRepo("Kua/Web", base=api.forge_url)
    await track(api, repo=f"{api.forge_url.upper()}/kua/web/", forge_repo=None)
    body = await accepted(api, deliver("push", repo.push(sha1()), SECRET))
    assert len(body["deploy_ids"]) == 1
