"""Bad input at one door: an uploaded zip."""
from __future__ import annotations

import pytest

from tests.core.bad_inputs.table import ZIPS
from tests.core.bad_inputs.world import check_refused


@pytest.mark.parametrize("make, pattern", ZIPS)
def test_refused_clearly_and_nothing_changes(world, make, pattern):
    check_refused(world, make, pattern)
