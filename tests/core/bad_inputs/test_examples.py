"""Bad input at one door: a task's example file."""
from __future__ import annotations

import pytest

from tests.core.bad_inputs.table import EXAMPLES
from tests.core.bad_inputs.world import check_refused


@pytest.mark.parametrize("make, pattern", EXAMPLES)
def test_refused_clearly_and_nothing_changes(world, make, pattern):
    check_refused(world, make, pattern)
