"""`kuadeploy serve` start-up: problems a user can make are one line and exit 2, and
what cannot stop start-up (an engine that is unusable) does not."""

from __future__ import annotations

import pytest

from kuadeploy.service import Service, StartupError
from tests.api_support import make_config


async def test_an_unreadable_checkpoint_key_is_a_startup_error(tmp_path):
    key = tmp_path / "checkpoint.key"
    key.write_text("not a signer key\n")
    with pytest.raises(StartupError, match="checkpoint key"):
        await Service.open(make_config(tmp_path / "d", checkpoint_key=str(key)))


async def test_a_missing_checkpoint_key_is_a_startup_error(tmp_path):
    missing = str(tmp_path / "nowhere" / "checkpoint.key")
    with pytest.raises(StartupError, match="no such file"):
        await Service.open(make_config(tmp_path / "d", checkpoint_key=missing))


async def test_an_invalid_checkpoint_origin_is_a_startup_error(tmp_path):
    with pytest.raises(StartupError, match="checkpoint_origin"):
        await Service.open(make_config(tmp_path / "d", checkpoint_origin="has space"))
