""""No close match": the rule's threshold comes from the pool's own spread, a task inside a cluster is close, one
pointing away from every model is flagged, and bad settings are refused."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import DeltaAtlasError
from core.map.geometry import cosine_similarities
from core.reuse.novelty import CloseMatchRule


def clustered_pool(seed: int = 0, clusters: int = 4, per: int = 5, d: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return np.repeat(centres, per, axis=0) + 0.3 * rng.normal(size=(clusters * per, d)), centres


def test_a_task_inside_a_cluster_is_close_and_one_outside_every_cluster_is_not():
    pool, centres = clustered_pool()
    rule = CloseMatchRule().fit(pool)
    inside = centres[1] + 0.3 * np.random.default_rng(5).normal(size=pool.shape[1])
    outside = np.random.default_rng(6).normal(size=pool.shape[1])
    assert rule.is_close(cosine_similarities(inside[None], pool)[0])
    assert not rule.is_close(cosine_similarities(outside[None], pool)[0])
    assert "Not close by the vectors" in rule.explain(cosine_similarities(outside[None], pool)[0])


def test_the_threshold_follows_the_pool_not_a_fixed_number():
    tight, _ = clustered_pool(clusters=1, per=12)          # one cluster: every pair is similar
    spread, _ = clustered_pool(clusters=6, per=2)
    assert CloseMatchRule().fit(tight).threshold_ > CloseMatchRule().fit(spread).threshold_ + 0.3


def test_strength_is_the_mean_of_the_top_similarities():
    assert CloseMatchRule(top=2).strength(np.array([0.1, 0.9, 0.5])) == pytest.approx(0.7)


@pytest.mark.parametrize("rule, vectors, message", [
    (CloseMatchRule(), np.ones((2, 4)), "at least 3"),
    (CloseMatchRule(quantile=1.0), np.eye(4), "quantile"),
    (CloseMatchRule(top=0), np.eye(4), "top"),
])
def test_bad_settings_are_refused(rule, vectors, message):
    with pytest.raises(DeltaAtlasError, match=message):
        rule.fit(vectors)


def test_an_unfitted_rule_says_so():
    with pytest.raises(DeltaAtlasError, match="not fitted"):
        CloseMatchRule().is_close(np.array([0.5]))


def test_a_pool_may_ship_its_own_settings(tmp_path):
    from core.reuse.novelty import load_rule

    assert load_rule(None) == CloseMatchRule() and load_rule(tmp_path / "none.json") == CloseMatchRule()
    (tmp_path / "novelty.json").write_text('{"quantile": 0.7, "top": 2}')
    assert load_rule(tmp_path / "novelty.json") == CloseMatchRule(quantile=0.7, top=2)
    (tmp_path / "novelty.json").write_text('{"quantile": "high"}')
    with pytest.raises(DeltaAtlasError, match="novelty.json cannot be read"):
        load_rule(tmp_path / "novelty.json")


# -- the verdict from both sides ---------------------------------------------------------------------------------
def gains_frame(values):
    import pandas as pd

    from core.reuse.fit import HELP_MARGIN

    return pd.DataFrame({"gain": values, "helps": [v is not None and v >= HELP_MARGIN for v in values]})


@pytest.mark.parametrize("close, gains, combine, expected", [
    (True, [0.10, -0.2], "both", "strong"), (True, [-0.1], "both", "weak"), (False, [0.10], "both", "weak"),
    (False, [-0.1, 0.0], "both", "none"), (True, [-0.1], "either", "none"), (False, [0.2], "either", "none"),
    (True, [0.2], "either", "strong"), (False, [0.2], "vectors", "none"), (True, [-0.3], "help", "none"),
    (True, None, "both", "strong"), (False, None, "both", "none"), (False, [None], "both", "none")])
def test_verdict_combines_the_vectors_and_the_measured_gain(close, gains, combine, expected):
    from core.reuse.novelty import verdict

    assert verdict(close, None if gains is None else gains_frame(gains), combine) == expected


def test_verdict_words_say_what_was_measured():
    from core.reuse.novelty import verdict_words

    strong = verdict_words("strong", True, "math", gains_frame([0.12, -0.3]))
    assert strong.startswith("Strong match") and "math models" in strong and "1 of the 2 closest lowers" in strong \
        and "12%" in strong
    weak = verdict_words("weak", True, "legal", gains_frame([-0.01, -0.2]))
    assert weak.startswith("Weak match") and "none of the 2 closest answers your examples better" in weak
    none = verdict_words("none", False, None, gains_frame([-0.2]))
    assert none.startswith("Nothing in this pool fits your task") and none.endswith("only the least bad.")
    everyday = verdict_words("none", False, "math", gains_frame([-0.2]), reference="pet-care")
    assert "look more like everyday tasks (such as 'pet care') than like any model here" in everyday


def test_unknown_combine_is_refused():
    from core.reuse.novelty import verdict

    with pytest.raises(DeltaAtlasError, match="Unknown combine"):
        verdict(True, gains_frame([0.1]), "sometimes")


# -- a weighted rule: several signals, weighed as the pool's calibration chose -----------------------------------
def test_a_weighted_rule_scores_the_signals_it_names():
    rule = CloseMatchRule(top=2, weights={"raw": 2.0, "compared": 1.0}, bias=-2.0).fit(np.eye(4))
    raw, compared = np.array([0.5, 0.5, 0.1]), np.array([0.9, 0.7, 0.0])     # strengths 0.5 and 0.8
    assert rule.signals(compared, raw=raw) == pytest.approx({"raw": 0.5, "compared": 0.8})
    assert rule.score(rule.signals(compared, raw=raw)) == pytest.approx(-0.2)
    assert not rule.is_close(compared, raw=raw)
    assert rule.is_close(compared, raw=np.array([0.7, 0.6, 0.0]))            # 2 * 0.65 + 0.8 - 2 = 0.1
    note = rule.explain(compared, raw=raw)
    assert note.startswith("Not close by this pool's calibrated rule")
    assert "0.50 by the paper's measure" in note and "-0.20" in note


def test_a_weighted_rule_reads_the_lead_over_the_references_or_falls_back_to_the_pool():
    rule = CloseMatchRule(top=1, weights={"lead": 10.0}, bias=0.5).fit(np.eye(4))   # close: lead >= -0.05
    sims = np.array([0.6, 0.2])
    assert rule.reads_references() and rule.is_close(sims, np.array([0.64, 0.1]))
    assert not rule.is_close(sims, np.array([0.66, 0.1]))
    assert "'chat'" in rule.explain(sims, np.array([0.66, 0.1]), ["chat", "cards"])
    assert rule.reads_background(None)                     # no references: the pool's own background decides
    assert rule.is_close(sims, None) == (0.6 >= rule.threshold_)


@pytest.mark.parametrize("weights, bias", [({}, 0.0), ({"loudness": 1.0}, 0.0), ({"raw": float("nan")}, 0.0),
                                           ({"raw": 1.0}, float("inf"))])
def test_bad_weights_are_refused(weights, bias):
    with pytest.raises(DeltaAtlasError, match="weights"):
        CloseMatchRule(weights=weights, bias=bias).fit(np.eye(4))


def test_a_pool_may_ship_a_weighted_rule(tmp_path):
    from core.reuse.novelty import load_rule

    (tmp_path / "novelty.json").write_text('{"top": 3, "weights": {"raw": 4.0, "compared": 2.5}, "bias": -3.0}')
    assert load_rule(tmp_path / "novelty.json") == CloseMatchRule(top=3, weights={"raw": 4.0, "compared": 2.5},
                                                                  bias=-3.0)
    (tmp_path / "novelty.json").write_text('{"weights": [1, 2]}')
    with pytest.raises(DeltaAtlasError, match="cannot be read"):
        load_rule(tmp_path / "novelty.json")
