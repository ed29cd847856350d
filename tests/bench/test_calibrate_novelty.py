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
    assert set(out["rule"]) == {"quantile", "top", "combine", "threshold", "margin", "reference_tasks"}
