"""The bad-input table as a whole."""
from __future__ import annotations

from tests.core.bad_inputs.table import BAD


def test_the_table_is_big_and_distinct():
    ids = [p.id for p in BAD]
    assert len(ids) == len(set(ids)) and len(ids) >= 170
