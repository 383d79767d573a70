"""Verify's identity check: a label can lie, so the image ID must match too."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kuadeploy.adapters.docker import ContainerState
from kuadeploy.adapters.docker_specs import LABEL_REVISION, LABEL_SHA, release_labels
from kuadeploy.pipeline.verify import VerifyFailed, check_identity

SHA = "a" * 40
OTHER_SHA = "b" * 40
IMAGE = "sha256:" + "1" * 64
OTHER_IMAGE = "sha256:" + "2" * 64


def state(image_id: str = IMAGE, **labels: str) -> ContainerState:
    return ContainerState(
        id="c" * 64,
        name="web",
        image_id=image_id,
        running=True,
        status="running",
        exit_code=0,
        restart_count=0,
        labels={**release_labels("web", SHA, "d-1"), **labels},
        started_at=datetime.now(UTC),
        finished_at=None,
        error="",
    )


def test_the_release_itself_passes():
    check_identity(state(), SHA, IMAGE)


def test_right_labels_on_another_image_fail():
    with pytest.raises(VerifyFailed, match="runs image sha256:2222"):
        check_identity(state(OTHER_IMAGE), SHA, IMAGE)


@pytest.mark.parametrize("label", [LABEL_SHA, LABEL_REVISION])
def test_right_image_with_another_shas_label_fails(label):
    with pytest.raises(VerifyFailed, match=f"label {label}='{OTHER_SHA}'"):
        check_identity(state(**{label: OTHER_SHA}), SHA, IMAGE)
