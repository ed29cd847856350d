"""bench/eval_fit.py's scoring of a run: top-1 by lowest loss, mixtures count for each of their domains, the best
domain group by its 3 lowest single-dataset losses, and the relative-gain flag."""
from __future__ import annotations

import pandas as pd

from tests.bench.conftest import load_bench


def test_summary_counts_right_domains_and_flags():
    eval_fit = load_bench("eval_fit")
    catalog = pd.DataFrame({"name": ["m1", "m2", "l1", "l2", "ml"],
                            "domain": ["medical", "medical", "legal", "legal", "legal+medical"]})
    rows = [
        {"task": "a", "domain": "medical", "base": 4.0, "losses": {"m1": 1.0, "m2": 1.5, "l1": 2.0, "l2": 3.0, "ml": 2.5}},
        {"task": "b", "domain": "legal", "base": 4.0, "losses": {"m1": 1.0, "m2": 3.5, "l1": 2.0, "l2": 2.1, "ml": 3.0}},
        {"task": "c", "domain": "legal", "base": 4.0, "losses": {"m1": 2.9, "m2": 2.9, "l1": 3.0, "l2": 3.0, "ml": 0.5}},
        {"task": "off", "domain": "off", "base": 4.0, "losses": {"m1": 3.95, "m2": 4.0, "l1": 4.0, "l2": 4.0, "ml": 4.0}},
    ]
    for row in rows:
        row["seconds"] = 1.0
    result = eval_fit.summary(rows, catalog, gain_threshold=0.04)
    assert result["tasks"] == 3
    assert result["top1"] == "2/3"          # b's lowest loss is a medical model; c's is the legal+medical mixture
    assert result["group"] == "2/3"         # b: legal 2.05 beats medical 2.25; c: medical 2.9 beats legal 3.0
    assert result["off_flagged"] == "1/1"   # gain 0.0125 < 0.04
    assert result["in_flagged"] == "0/3"
