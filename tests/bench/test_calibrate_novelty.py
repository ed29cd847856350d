"""bench/calibrate_novelty.py's summary: it replaces the counts it owns and keeps what other tools wrote."""
from __future__ import annotations

import json

import numpy as np

from core.pool.vectors import make_table
from tests.bench.conftest import load_bench


def row(domain: str, vector: np.ndarray, right: bool, gain: float | None = None) -> dict:
    return {"domain": domain, "vector": list(vector), "top1_right": right, "top5_majority": right,
            "group_right": right, "steps": 30, "seconds": 2.0,
            "gains": [] if gain is None else [{"name": "m", "gain": gain}]}


def test_write_summary_keeps_keys_it_does_not_own(tmp_path):
    calibrate = load_bench("calibrate_novelty")
    vectors = np.random.default_rng(0).normal(size=(8, 6))
    summary_file = tmp_path / "search_quality.json"
    summary_file.write_text(json.dumps({"loss_on": {"top1": "9/10"}, "ood": {"top1": "stale"}}))
    calibration = [row("legal", vectors[:3].mean(0), True), row("off", -vectors.sum(0), False)]
    check = [row("math", vectors[3:6].mean(0), False, gain=0.2), row("math", vectors[5:8].mean(0), True)]
    table = make_table([f"m{i}" for i in range(8)], vectors)
    calibrate.write_summary(summary_file, table, None, calibration, check)
    out = json.loads(summary_file.read_text())
    assert out["loss_on"] == {"top1": "9/10"}
    assert out["ood"]["top1"] == "1/2" and out["ood"]["in_flagged"] == "0/2"
    assert out["held_out"]["top1"] == "1/1"
    assert out["off"] == {"tasks": 1, "flagged": "1/1"}
    assert set(out["rule"]) == {"quantile", "top", "combine", "threshold", "margin", "weights", "reference_tasks"}


def test_weighted_rules_are_judged_on_tasks_they_were_not_fitted_on():
    calibrate = load_bench("calibrate_novelty")
    rng = np.random.default_rng(1)
    inside = [calibrate.Sims(raw=np.array([0.8, 0.7, 0.6]) + 0.05 * rng.normal(size=3),
                             space=np.array([0.9, 0.9, 0.8]) + 0.05 * rng.normal(size=3), references=None)
              for _ in range(8)]
    outside = [calibrate.Sims(raw=np.array([0.3, 0.2, 0.2]) + 0.05 * rng.normal(size=3),
                              space=np.array([0.4, 0.3, 0.3]) + 0.05 * rng.normal(size=3), references=None)
               for _ in range(6)]
    rows = [row("legal", np.zeros(2), True)] * 8 + [row("off", np.zeros(2), False)] * 6
    candidates = calibrate.weighted_candidates(rows, inside + outside, top=3)
    assert {name.split(",")[0] for _, _, name in candidates} == {"weighted raw+compared"}   # no references: no lead
    for rule, (off_flagged, n_off, in_flagged, n_in), _ in candidates:
        assert (n_off, n_in) == (6, 8) and off_flagged == 6 and in_flagged == 0   # well apart: every task right
        assert set(rule.weights) == {"raw", "compared"}
        assert rule.is_close(inside[0].space, raw=inside[0].raw) and not rule.is_close(outside[0].space,
                                                                                         raw=outside[0].raw)


def test_eval_find_counts_each_verdict_per_side():
    eval_find = load_bench("eval_find")
    rows = [{"domain": "math", "verdict": "strong"}, {"domain": "math", "verdict": "weak"},
            {"domain": "off", "verdict": "none"}, {"domain": "legal", "verdict": "strong"}]
    assert eval_find.verdict_counts(rows) == {"in": {"strong": 2, "weak": 1}, "off": {"none": 1}}


def test_sample_merge_counts_offers_and_merges_that_beat_the_base(tmp_path):
    sample_merge = load_bench("sample_merge")
    tasks = [{"offered": ["a", "b"], "merge_beats_base": True}, {"offered": [], "merge_beats_base": None},
             {"offered": ["a", "b", "c"], "merge_beats_base": False}]
    assert sample_merge.merge_counts(tasks) == {"tasks": 3, "offered": "2/3", "beats_base": "1/2"}
    summary = tmp_path / "search_quality.json"
    summary.write_text('{"loss_on": {"text": "19/30"}}')
    sample_merge.write_summary(summary, tasks)
    assert json.loads(summary.read_text()) == {"loss_on": {"text": "19/30"}, "sample_merge": sample_merge.merge_counts(tasks)}


def test_weighted_rules_may_weigh_the_data_side_where_the_rows_have_it():
    calibrate = load_bench("calibrate_novelty")
    rng = np.random.default_rng(2)
    same = np.array([0.5, 0.4, 0.4])                       # the vectors cannot tell the tasks apart ...

    def sims(like: float) -> object:                       # ... the data side can
        return calibrate.Sims(raw=same + 0.05 * rng.normal(size=3), space=same + 0.05 * rng.normal(size=3),
                              references=None, data={"like_data": like + 0.01 * rng.normal(),
                                                     "data_lead": like - 0.5 + 0.01 * rng.normal()})

    rows = [row("legal", np.zeros(2), True)] * 8 + [row("off", np.zeros(2), False)] * 6
    candidates = calibrate.weighted_candidates(rows, [sims(0.9) for _ in range(8)] + [sims(0.6) for _ in range(6)],
                                               top=3)
    names = {name.split(",")[0] for _, _, name in candidates}
    assert {"weighted like_data+data_lead", "weighted raw+like_data"} <= names
    assert not any("lead+" in name.replace("data_lead", "") for name in names)    # no references: no vector lead
    best = max((counts[0] - 10 * counts[2], name) for _, counts, name in candidates if "like_data" in name)
    assert best[0] == 6                                    # every off-domain task flagged, no in-domain task
