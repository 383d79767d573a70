"""`kuadeploy deploy --follow`: a live view of one deploy's steps, and its verdict."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from kuadeploy.client import Client, ClientError
from projections.deploys import ACTIVE

RECONNECT_S = 300.0

TERMINAL = {
    "DeploySucceeded": "succeeded",
    "DeployFailed": "failed",
    "RolledBack": "rolled back",
    "DeployCancelled": "cancelled",
    "DeploySuperseded": "superseded",
    "DeployInterrupted": "interrupted",
}


def describe(event: dict) -> str | None:
    """One line for an event of a deploy stream, or None for events not worth a line."""
    kind, data = event["type"], event["data"]
    if kind == "DeployRequested":
        target = data.get("sha") or "the branch head"
        return f"requested by {event['actor']} ({data['trigger']}): {target}"
    if kind == "DeployStarted":
        return "started"
    if kind == "StepStarted":
        return f"{data['step']:<15} …"
    if kind == "StepSucceeded":
        extra = data["detail"].get("sha") or data["detail"].get("image_id") or ""
        return f"{data['step']:<15} ok {extra}".rstrip()
    if kind == "StepFailed":
        return f"{data['step']:<15} FAILED: {data['error']}"
    if kind == "MigrationGateHeld":
        return f"migration gate held for {', '.join(data['paths'][:3])}: waiting for approval"
    if kind == "MigrationApproved":
        return f"migrations approved by {event['actor']}"
    if kind == "SelfHandoffStarted":
        return f"handing over to {data['transient']}: kuadeploy restarts as {data['sha'][:12]}"
    if kind == "RollbackStarted":
        return f"rolling back to {data.get('sha') or 'nothing (no earlier release)'}"
    if kind == "RolledBack" and not data.get("verified"):  # nothing verified runs
        return f"ROLLBACK FAILED {data.get('detail') or ''}".rstrip()
    if kind in TERMINAL:
        reason = data.get("reason") or data.get("detail") or data.get("sha") or ""
        return f"{TERMINAL[kind].upper()} {reason}".rstrip()
    return None


def follow(
    client: Client, deploy_id: str, out: TextIO = sys.stdout, *, progress: bool = True
) -> int:
    """Print the deploy as it happens (each step with `progress`, else only the
    verdict); 0 only when it ends verified and succeeded, or had nothing to do because
    its commit is already the verified, running release.

    The server may go away mid-deploy and come back — a self-deploy replaces it,
    and the new (or restored) instance records the outcome — so a stream that ends
    or breaks before the deploy does is resumed, for up to RECONNECT_S.
    """
    started = time.monotonic()
    last, lost = "0", None
    path = f"/api/v1/deploys/{deploy_id}/stream"
    while True:
        try:
            for ident, event in client.events(path, last):
                last, lost = ident, None
                line = describe(event) if progress else None
                if line:
                    out.write(f"[{time.monotonic() - started:6.1f}s] {line}\n")
                    out.flush()
            view = client.deploy_view(deploy_id)
        except ClientError:
            lost = lost or time.monotonic()
            if last == "0" or time.monotonic() - lost > RECONNECT_S:
                raise  # never reached, or gone for good
            time.sleep(0.5)
            continue
        if view["status"] not in ACTIVE:
            break
        time.sleep(0.5)  # the stream ended early: the server is stopping
    verdict = view["status"]
    if verdict == "cancelled" and _already_running(client, view):
        sha = view["sha"]
        out.write(
            f"deploy {deploy_id}: nothing to do — {sha} is already the verified, running release\n"
        )
        return 0
    out.write(
        f"deploy {deploy_id}: {verdict}"
        + (f" — {view['reason']}" if view.get("reason") else "")
        + "\n"
    )
    return 0 if verdict == "succeeded" else 1


def _already_running(client: Client, view: dict) -> bool:
    """Whether a cancelled deploy ended right after fetch because its commit is the
    verified release (the pipeline's "nothing to do"), and that release is what runs:
    the request is fulfilled, as it is when the API answers a SHA with a no-op."""
    steps = [(s["name"], s["status"]) for s in view["steps"]]
    if steps != [("fetch", "succeeded")] or not view.get("sha"):
        return False
    try:
        status = client.runtime_status(view["app"])
    except ClientError:
        return False
    release = status.get("release") or {}
    return release.get("sha") == view["sha"] and status.get("drift") is False
