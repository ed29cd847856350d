"""bench/choose_lens_shrinkage.py: the best dev value, and among ties the middle of the longest run."""
from __future__ import annotations

from tests.bench.conftest import load_bench


def test_ties_take_the_middle_of_the_longest_run():
    choose = load_bench("choose_lens_shrinkage").choose
    flat = {s: (20, 17, 0, 21) for s in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)}
    assert choose({"auto": (18, 15, 0, 21), **flat, 0.6: (19, 17, 0, 21), 0.9: (20, 17, 0, 21)}) == 0.2
    assert choose({"auto": (18, 15, 0, 21), 0.3: (18, 16, 0, 21)}) == 0.3       # the top-5 count breaks a tie
    assert choose({"auto": (19, 15, 0, 21), 0.3: (18, 16, 0, 21)}) == "auto"    # top-1 first
