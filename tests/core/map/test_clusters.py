"""Clusterer and label_silhouette on vectors whose clusters are known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import DeltaAtlasError
from core.map.clusters import Clusterer, label_silhouette
from tests.core.vector_data import blobs, one_thread  # noqa: F401  (one_thread: an autouse fixture)


def test_clusterer_auto_recovers_known_clusters():
    X, y = blobs(n_clusters=4)
    c = Clusterer().fit(X)
    assert c.n_clusters_ == 4
    assert max(c.scores_, key=c.scores_.get) == 4 and c.silhouette_ > 0.8
    # same partition as the truth (cluster numbers are arbitrary)
    assert len({(a, b) for a, b in zip(c.labels_, y)}) == 4
    agg = Clusterer(algorithm="agglomerative").fit(X)
    assert agg.n_clusters_ == 4
    fixed = Clusterer(n_clusters=2).fit(X)
    assert fixed.n_clusters_ == 2 and np.bincount(fixed.labels_)[0] >= np.bincount(fixed.labels_)[1]  # 0 = largest


def test_clusterer_bad_and_tiny_input():
    with pytest.raises(DeltaAtlasError, match="n_clusters"):
        Clusterer(n_clusters=7).fit(np.eye(3))
    c = Clusterer().fit(np.eye(2))
    assert c.n_clusters_ == 1 and math.isnan(c.silhouette_)


def test_label_silhouette():
    X, y = blobs()
    assert label_silhouette(X, y) > 0.8
    shuffled = np.random.default_rng(1).permutation(y)
    assert label_silhouette(X, shuffled) < 0.2
    assert math.isnan(label_silhouette(X, ["a"] * len(X)))              # one label: undefined
    with_missing = [str(v) for v in y[:-2]] + ["", None]
    assert label_silhouette(X, with_missing) > 0.8                       # missing labels are left out


def test_label_silhouette_leaves_out_labels_held_by_one_model():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16))
    X = np.vstack([centres[0] + 0.05 * rng.normal(size=(5, 16)), centres[1] + 0.05 * rng.normal(size=(5, 16)),
                   centres[1] + 0.01 * rng.normal(size=(1, 16))])      # a one-model label sitting on group b
    labels = ["a"] * 5 + ["b"] * 5 + ["a+b"]
    assert label_silhouette(X, labels) == pytest.approx(label_silhouette(X[:10], labels[:10]))
    assert label_silhouette(X, labels) > 0.8


def test_clusterer_on_a_sample_labels_every_model():
    """Above sample_size models, k is chosen on a sample; every model still gets a cluster, the right one."""
    X, y = blobs(n_clusters=4, per=100, spread=0.1)
    whole = Clusterer(k_range=(2, 6)).fit(X)
    sampled = Clusterer(k_range=(2, 6), sample_size=120).fit(X)
    assert whole.sample_ is None and len(sampled.sample_) == 120 and sampled.labels_.shape == (len(X),)
    assert sampled.n_clusters_ == 4 and len({(a, b) for a, b in zip(sampled.labels_, y)}) == 4
    assert sampled.silhouette_ == pytest.approx(whole.silhouette_, abs=0.05)
    fixed = Clusterer(n_clusters=3, sample_size=120).fit(X)
    assert fixed.n_clusters_ == 3 and np.bincount(fixed.labels_)[0] >= np.bincount(fixed.labels_)[-1]
    agg = Clusterer(algorithm="agglomerative", k_range=(2, 6), sample_size=120).fit(X)
    assert len({(a, b) for a, b in zip(agg.labels_, y)}) == 4
    again = Clusterer(k_range=(2, 6), sample_size=120).fit(X)
    assert (again.labels_ == sampled.labels_).all()                      # the sample is seeded
