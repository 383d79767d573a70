"""Webhooks end to end: `git push` to a bare repository, the delivery Forgejo would send
for it, and the pushed SHA built, started and verified on a real engine."""

from __future__ import annotations

import asyncio
import time

import pytest

from kuadeploy.config import WebhookConfig
from tests.deploy_support import (
    container_labels,
    deploy,
    deploy_service,
    health_body,
    wait_status,
)
from tests.forge import ForgeRepo, deliver
from tests.webhook_support import SECRET, post

pytestmark = pytest.mark.docker


@pytest.fixture
async def api(tmp_path, docker_a):
    hooks = WebhookConfig(secret=SECRET)
    async with deploy_service(tmp_path / "data", docker_a, webhook=hooks) as client:
        yield client


async def track(api, app) -> ForgeRepo:
    """Register `app` as the forge's repository kua/<name>; the forge's view of it."""
    entry = app.entry("a", forge_repo=f"kua/{app.name}")
    status, body, _ = await api.call("PUT", f"/api/v1/apps/{app.name}", json=entry)
    assert status == 201, body
    return ForgeRepo(f"kua/{app.name}", base="http://127.0.0.1:3000", ssh="git@127.0.0.1")


async def all_events(api) -> list[dict]:
    events, after = [], 0
    while True:
        _, page, _ = await api.call("GET", f"/api/v1/events?after={after}&limit=1000")
        events += page["events"]
        if not page["events"]:
            return events
        after = page["next_after"]


async def test_git_push_and_its_forgejo_delivery_deploy_exactly_that_sha(api, sample_app, docker_a):
    forge = await track(api, sample_app)
    before = sample_app.head
    after = sample_app.healthy(note="pushed")  # git push to the bare repository
    d = deliver("push", forge.push(after, before=before), SECRET)
    status, body, elapsed = await post(api, d)
    assert status == 202 and elapsed < 1.0, body
    [deploy_id] = body["deploy_ids"]
    view = await wait_status(api, deploy_id)
    assert view["status"] == "succeeded", view
    assert (view["sha"], view["trigger"], view["delivery"]) == (after, "webhook", d.uuid)
    assert view["requested_by"] == f"webhook:kua/{sample_app.name}"
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == after
    assert health_body(sample_app).strip() == f"sha={after}"

    # the forge redelivers the same UUID: the same answer, nothing appended
    head = await api.head_seq()
    assert (await post(api, d))[:2] == (202, body)
    assert await api.head_seq() == head
    # a manual replay (new UUID) and the "Test delivery" button: nothing to do, said so
    for again in (forge.push(after, before=before), forge.test_push(after)):
        status, answer, _ = await post(api, deliver("push", again, SECRET))
        assert status == 200 and set(answer) == {"ignored"}
        [skip] = answer["ignored"]
        assert skip["deploy_id"] == deploy_id and skip["app"] == sample_app.name
        assert skip["reason"].endswith(f"{after} is already the verified release")
    _, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["release"]["sha"] == after and rt["drift"] is False


async def test_fifty_deliveries_in_two_seconds_one_deploy_at_a_time_the_last_wins(
    api, sample_app, docker_a
):
    forge = await track(api, sample_app)
    pushes = []
    for i in range(50):
        before = sample_app.head
        pushes.append((before, sample_app.healthy(note=f"push {i}")))
    deliveries = [deliver("push", forge.push(a, before=b), SECRET) for b, a in pushes]

    async def send(i: int, d) -> tuple[int, dict, float]:
        await asyncio.sleep(i * 0.04)  # 50 pushes over 2 s, in push order
        return await post(api, d)

    started = time.monotonic()
    answers = await asyncio.gather(*(send(i, d) for i, d in enumerate(deliveries)))
    assert time.monotonic() - started < 3.0
    assert all(elapsed < 1.0 for _, _, elapsed in answers), max(a[2] for a in answers)
    assert all(status in (200, 202) for status, _, _ in answers)
    status, last, _ = answers[-1]
    # a deploy of an earlier push deploys the branch head it finds, often the last push's
    # commit already: the last push is then "already running", or a no-op once it runs
    covering = last["deploy_ids"][0] if status == 202 else last["ignored"][0]["deploy_id"]
    final = await wait_status(api, covering, timeout=120)
    assert final["status"] in ("succeeded", "cancelled") and final["sha"] == pushes[-1][1], final
    _, rt, _ = await api.call("GET", f"/api/v1/apps/{sample_app.name}/runtime-status")
    assert rt["release"]["sha"] == pushes[-1][1] and rt["drift"] is False
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == pushes[-1][1]

    events = await all_events(api)
    # every delivery accounted for: one record each, naming the deploys it requested
    records = {e["data"]["delivery"]: e for e in events if e["stream"].startswith("webhook/")}
    assert set(records) == {d.uuid for d in deliveries}
    requests = {e["stream"][7:]: e for e in events if e["type"] == "DeployRequested"}
    for d, (_, body, _) in zip(deliveries, answers, strict=True):
        record, started = records[d.uuid], body.get("deploy_ids", [])
        assert record["data"]["deploy_ids"] == started
        for deploy_id in started:
            assert requests[deploy_id]["data"]["delivery"] == d.uuid
        skipped = [s["deploy_id"] for s in body["ignored"]]
        assert len(started) + len(skipped) == 1  # each delivery: a deploy or why not
    assert {r["data"]["delivery"] for r in requests.values()} <= set(records)
    # never two deploys running for the app: replay the ledger
    running, peak, ended = set(), 0, {}
    for e in events:
        if e["type"] == "DeployStarted":
            running.add(e["stream"])
        elif e["type"] in ("DeploySucceeded", "DeployFailed", "RolledBack", "DeployCancelled",
                           "DeploySuperseded", "DeployInterrupted"):  # fmt: skip
            running.discard(e["stream"])
            ended[e["stream"]] = e["type"]
        peak = max(peak, len(running))
    assert peak == 1
    assert all(ended.get(f"deploy/{i}") for i in requests), "a requested deploy never ended"
    started_ids = {e["stream"] for e in events if e["type"] == "DeployStarted"}
    assert len(started_ids) < 10, "queued deploys were not coalesced"


async def test_a_late_or_replayed_push_never_deploys_an_older_commit(api, sample_app, docker_a):
    forge = await track(api, sample_app)
    base = sample_app.head
    b = sample_app.healthy(note="B")
    c = sample_app.healthy(note="C")  # branch: base -> B -> C; C's delivery is still on its way
    status, body, _ = await post(api, deliver("push", forge.push(b, before=base), SECRET))
    assert status == 202, body
    view = await wait_status(api, body["deploy_ids"][0])
    assert (view["status"], view["sha"]) == ("succeeded", c), view  # the head B leads to
    assert view["steps"][0]["detail"]["pushed"] == b
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == c

    # C's delivery arrives: already done; B's again (a Redeliver): older, said at once
    status, body, _ = await post(api, deliver("push", forge.push(c, before=b), SECRET))
    assert status == 200 and body["ignored"][0]["reason"].endswith(
        "is already the verified release"
    )
    status, body, _ = await post(api, deliver("push", forge.push(b, before=base), SECRET))
    assert status == 200, body
    assert body["ignored"] == [
        {
            "app": sample_app.name,
            "reason": f"{b} is older than a push already received (the branch went on to {c})",
        }
    ]

    # D deployed through the API; C's push replayed: not known older, but it leads to D,
    # already the verified release: nothing is built
    d = sample_app.healthy(note="D")
    assert (await wait_status(api, await deploy(api, sample_app.name)))["sha"] == d
    status, body, _ = await post(api, deliver("push", forge.push(c, before=b), SECRET))
    assert status == 202, body
    view = await wait_status(api, body["deploy_ids"][0])
    assert view["status"] == "cancelled" and view["sha"] == d, view
    assert view["reason"] == f"{d} is already the verified release; nothing to do"
    assert container_labels(docker_a, sample_app.name)["kua.sha"] == d
