"""Bad input at one door: merge settings."""
from __future__ import annotations

import pytest

from tests.core.bad_inputs.table import MERGES
from tests.core.bad_inputs.world import check_refused


@pytest.mark.parametrize("make, pattern", MERGES)
def test_refused_clearly_and_nothing_changes(world, make, pattern):
    check_refused(world, make, pattern)
