"""Pure: what an instance that starts during a hand-off records about it.

An instance that finds a self-deploy handing off (`SelfHandoffStarted`, no
outcome yet) tells by its own identity which side of the hand-off it is:

- the new release (its baked GIT_SHA is the target and, when the engine can say,
  it runs the recorded image in the recorded container): it records the recreate
  and verify steps and `DeploySucceeded`. Nothing else ever records that success;
- the previous release, brought back by the transient container (or never
  replaced): the deploy failed and kuadeploy is back on the previous release:
  `DeployFailed`, then `RolledBack`;
- anything else (an operator started another image): the deploy failed; nothing
  is claimed about what runs.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kuadeploy import events as ev


class Instance(msgspec.Struct, frozen=True):
    """The running kuadeploy process: its baked SHA and, when known, its container."""

    git_sha: str
    container_id: str | None = None
    container_name: str | None = None
    image_id: str | None = None

    def facts(self) -> dict[str, Any]:
        return {k: v for k, v in msgspec.to_builtins(self).items() if v is not None}


def handoff_of(view_handoff: dict[str, Any]) -> ev.SelfHandoffStarted:
    """The hand-off event's data back from a DeployView's `handoff`."""
    fields = {k: v for k, v in view_handoff.items() if k != "seq"}
    return msgspec.convert(fields, ev.SelfHandoffStarted)


def is_new_release(h: ev.SelfHandoffStarted, me: Instance) -> bool:
    return (
        me.git_sha == h.sha
        and me.image_id in (None, h.image_id)
        and me.container_name in (None, h.container)
    )


def is_previous_release(h: ev.SelfHandoffStarted, me: Instance) -> bool:
    return me.git_sha == h.previous_sha and me.image_id in (None, h.previous_image_id)


def resolve(
    h: ev.SelfHandoffStarted, me: Instance, report: dict[str, Any] | None = None
) -> list[ev.EventData]:
    """The events that end the hand-off, as recorded by instance `me`; `report` is
    the transient container's account of a failed hand-off, when it left one."""
    instance = me.facts()
    if is_new_release(h, me):
        checked = ["git_sha"] + (["image_id"] if me.image_id else [])
        checked += ["container"] if me.container_name else []
        return [
            ev.StepSucceeded(
                h.app,
                "recreate",
                {"container_id": me.container_id, "image_id": h.image_id, "by": h.transient},
            ),
            ev.StepStarted(h.app, "verify"),
            ev.StepSucceeded(
                h.app,
                "verify",
                {"recorded_by": "new instance", "instance": instance, "checked": checked},
            ),
            ev.DeploySucceeded(h.app, h.sha, h.image_id, me.container_id),
        ]
    if is_previous_release(h, me):
        why = f" ({report['why']})" if report and report.get("why") else ""
        reason = (
            f"the new release {h.sha[:12]} did not take over{why}; "
            f"kuadeploy runs the previous release {h.previous_sha[:12]} again"
        )
        detail: dict[str, Any] = {"recorded_by": "previous instance", "instance": instance}
        if report:
            detail["transient"] = report
        return [
            ev.StepFailed(h.app, "recreate", reason, detail),
            ev.DeployFailed(h.app, reason, "recreate"),
            ev.RollbackStarted(h.app, h.previous_sha, h.previous_image_id),
            ev.RolledBack(
                h.app,
                h.previous_sha,
                h.previous_image_id,
                verified=True,
                detail=reason,
            ),
        ]
    reason = (
        f"kuadeploy started as {me.git_sha[:12]} (image {str(me.image_id)[:19]}), "
        f"neither the new release {h.sha[:12]} nor the previous {h.previous_sha[:12]}"
    )
    return [
        ev.StepFailed(h.app, "recreate", reason, {"instance": instance}),
        ev.DeployFailed(h.app, reason, "recreate"),
    ]
