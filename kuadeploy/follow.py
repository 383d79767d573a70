"""`kuadeploy deploy --follow`: a live view of one deploy's steps, and its verdict."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from kuadeploy.client import Client

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
    if kind == "RollbackStarted":
        return f"rolling back to {data.get('sha') or 'nothing (no earlier release)'}"
    if kind in TERMINAL:
        reason = data.get("reason") or data.get("detail") or data.get("sha") or ""
        return f"{TERMINAL[kind].upper()} {reason}".rstrip()
    return None


def follow(client: Client, deploy_id: str, out: TextIO = sys.stdout) -> int:
    """Print the deploy as it happens; 0 only when it ends verified and succeeded."""
    started = time.monotonic()
    for _ident, event in client.events(f"/api/v1/deploys/{deploy_id}/stream", "0"):
        line = describe(event)
        if line:
            out.write(f"[{time.monotonic() - started:6.1f}s] {line}\n")
            out.flush()
    view = client.deploy_view(deploy_id)
    verdict = view["status"]
    out.write(
        f"deploy {deploy_id}: {verdict}"
        + (f" — {view['reason']}" if view.get("reason") else "")
        + "\n"
    )
    return 0 if verdict == "succeeded" else 1
