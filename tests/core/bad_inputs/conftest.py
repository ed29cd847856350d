"""The world a bad-input row runs in, fresh for each row."""
from __future__ import annotations

import pytest

from tests.core.bad_inputs.world import World, make_world


@pytest.fixture
def world(tmp_path) -> World:
    return make_world(tmp_path)
