"""bench/hostile_replay.py classifies a row of the bad-input table as the test does."""
from __future__ import annotations

import pytest

from tests.bench.conftest import load_bench
from tests.core.bad_inputs.table import BAD
from tests.core.bad_inputs.world import bad, catalog


def test_a_table_row_is_replayed_and_classified():
    replay = load_bench("hostile_replay")
    row = next(r for r in BAD if r.id == "catalog-empty")
    verdict, changed, message = replay.replay(row)
    assert (verdict, changed) == ("refused clearly", False) and "is empty" in message
    wrong = bad("catalog-said-otherwise", catalog("name,source,kind,base\n"), "a message nobody wrote", "")
    assert replay.replay(wrong)[0] == "refused, unclear"
    fine = bad("catalog-fine", catalog("name,source,kind,base\na,./a,lora,./b\n"), "x", "")
    assert replay.replay(fine)[0] == "accepted"
    assert replay.door("novelty-settings-margin-text") == "pool settings" and replay.door("zip-slip") == "zip"


@pytest.mark.parametrize("prefix", ["search", "reference", "pool", "novelty"])
def test_pool_settings_are_one_door(prefix):
    assert load_bench("hostile_replay").door(f"{prefix}-x") == "pool settings"
