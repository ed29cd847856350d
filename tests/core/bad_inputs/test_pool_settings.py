"""Bad input at one door: a pool's settings or reference tasks."""
from __future__ import annotations

import pytest

from tests.core.bad_inputs.table import SETTINGS
from tests.core.bad_inputs.world import check_refused


@pytest.mark.parametrize("make, pattern", SETTINGS)
def test_refused_clearly_and_nothing_changes(world, make, pattern):
    check_refused(world, make, pattern)
