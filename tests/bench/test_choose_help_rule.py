"""bench/choose_help_rule.py and the saved rows it reads: per-example losses decide who "helps", by the same rule as
the search (core.reuse.fit.helps)."""
from __future__ import annotations

import json

import numpy as np

from tests.bench.conftest import load_bench


def row(base, model, gain_of_all: float, counts=None) -> dict:
    counts = counts or [1.0] * len(base)
    return {"dataset": "t", "domain": "math", "examples": len(base),
            "gains": [{"name": "m", "loss": 0.0, "base_loss": 1.0, "gain": gain_of_all}],
            "example_losses": {"": {"sums": base, "counts": counts}, "m": {"sums": model, "counts": counts}}}


def test_saved_rows_count_better_examples_and_judge_by_the_search_rule(monkeypatch):
    eval_find = load_bench("eval_find")
    monkeypatch.setattr("core.reuse.fit.HELP_SHARE", 0.5)
    one_example = row([1.0, 1.0, 1.0, 1.0], [0.1, 1.2, 1.2, 1.2], 0.10)        # 10% overall, better on 1 of 4
    gains = eval_find.saved_gains(one_example)
    assert (gains["better"].iloc[0], gains["compared"].iloc[0], bool(gains["helps"].iloc[0])) == (1, 4, False)
    most = row([1.0, 1.0, 1.0, 1.0], [0.8, 0.9, 0.9, 1.1], 0.10)
    assert bool(eval_find.saved_gains(most)["helps"].iloc[0])
    unmeasured_example = row([1.0, 0.0], [0.5, 0.0], 0.5, counts=[2.0, 0.0])      # no tokens: not compared
    assert eval_find.examples_better(unmeasured_example["example_losses"], "m") == (1, 1)
    assert eval_find.saved_gains({"gains": []}) is None
    old = {"gains": [{"name": "m", "loss": 0.9, "base_loss": 1.0, "gain": 0.1}]}  # rows from before: the gain alone
    assert bool(eval_find.saved_gains(old)["helps"].iloc[0])


def test_split_halves_score_claims_against_the_other_half(tmp_path):
    choose = load_bench("choose_help_rule")
    rng = np.random.default_rng(0)
    helpful = row(list(np.ones(12)), list(0.7 + 0.05 * rng.normal(size=12)), 0.3)      # better everywhere
    lucky = row(list(np.ones(12)), [0.05] + [1.1] * 11, 0.0)                           # one example's doing
    lucky["dataset"] = "u"
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"30": [helpful, lucky]}))
    items = choose.candidates(str(path))
    assert len(items) == 2
    tally = choose.split_half(items, (0.0, 0.5), splits=50, seed=0)
    assert tally[0.5]["precision"] == 1.0                   # the share turns down the lucky one's claims
    assert tally[0.0]["precision"] < 1.0                    # without it, a half holding the lucky example claims
    assert choose.whole(items, (0.0, 0.5)) == {0.0: 1, 0.5: 1}
