"""The transient container's account of a failed hand-off, for the restored instance.

The engine removes the transient container, and its log, when it exits; this
small file in the data directory is how its reason reaches the ledger, recorded
by the instance it brought back.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from kuadeploy.config import Config
from kuadeploy.files import write_atomic


def report_path(config: Config, deploy_id: str) -> Path:
    return Path(config.data_dir) / "handoff" / f"{deploy_id}.json"


def read_report(config: Config, deploy_id: str) -> dict | None:
    """The transient container's report of a failed hand-off, if it left one."""
    try:
        doc = msgspec.json.decode(report_path(config, deploy_id).read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def write_report(config: Config, deploy_id: str, doc: dict) -> None:
    write_atomic(report_path(config, deploy_id), msgspec.json.encode(doc))
