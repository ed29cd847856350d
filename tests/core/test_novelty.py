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
