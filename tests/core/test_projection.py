"""Projector, Clusterer and the cosine helpers on vectors whose structure is known."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from core.errors import DeltaAtlasError
from core.map.projection import (
    Clusterer,
    Projector,
    cosine_similarities,
    describe_quality,
    label_silhouette,
    map_quality,
    nearest_neighbours,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny problems run faster on one OpenMP thread (k-means, t-SNE), above all on a shared, busy CPU."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def blobs(n_clusters: int = 4, per: int = 6, dim: int = 32, spread: float = 0.05, seed: int = 0):
    """Well-separated directions: ``per`` noisy copies of ``n_clusters`` random unit vectors."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    X = np.vstack([c + spread * rng.normal(size=(per, dim)) for c in centers])
    return X * rng.uniform(0.5, 3.0, size=(len(X), 1)), np.repeat(np.arange(n_clusters), per)  # scale must not matter


def test_cosine_similarities_and_neighbours():
    X = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    S = cosine_similarities(X)
    assert S.shape == (4, 4) and np.allclose(np.diag(S), 1.0)
    assert S[0, 3] == pytest.approx(-1.0)
    assert nearest_neighbours(X, 0, k=2)[0][0] == 1                     # itself left out
    assert [i for i, _ in nearest_neighbours(X, 0, k=5)] == [1, 2, 3]
    assert nearest_neighbours(X, np.array([0.0, 3.0]), k=1) == [(2, pytest.approx(1.0))]
    with pytest.raises(DeltaAtlasError, match="Row 9"):
        nearest_neighbours(X, 9)
    with pytest.raises(DeltaAtlasError, match="NaN"):
        cosine_similarities(np.array([[1.0, np.nan]]))


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


@pytest.mark.parametrize("method", ["umap", "pca", "tsne"])
def test_projector_keeps_clusters_and_places_new_points(method):
    X, y = blobs(n_clusters=3, per=8)
    p = Projector(method=method, random_state=0).fit(X)
    assert p.embedding_.shape == (len(X), 2) and p.method_ == method and np.isfinite(p.embedding_).all()
    assert _euclid_silhouette(p.embedding_, y) > 0.5                      # clusters stay apart on the map
    new = X[y == 1][:2] * 1.5 + 0.01                                     # two new members of cluster 1
    placed = p.transform(new)
    assert placed.shape == (2, 2)
    centroids = np.stack([p.embedding_[y == k].mean(0) for k in range(3)])
    assert all(np.argmin(np.linalg.norm(centroids - q, axis=1)) == 1 for q in placed)


def _euclid_silhouette(E, y):
    from sklearn.metrics import silhouette_score

    return silhouette_score(E, y)


def test_projector_is_reproducible():
    X, _ = blobs(n_clusters=3, per=5)
    a = Projector(random_state=3).fit_transform(X)
    b = Projector(random_state=3).fit_transform(X)
    assert np.allclose(a, b)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_projector_tiny_pool_falls_back_to_pca(n):
    X, _ = blobs(n_clusters=1, per=n)
    p = Projector(method="umap").fit(X)
    assert p.method_ == "pca" and "PCA" in p.note_ and p.embedding_.shape == (n, 2)
    assert p.transform(X[:1]).shape == (1, 2)


def test_projector_rejects_bad_input():
    with pytest.raises(DeltaAtlasError, match="method"):
        Projector(method="mds").fit(np.eye(6))
    with pytest.raises(DeltaAtlasError, match="shape"):
        Projector().fit(np.zeros((0, 3)))
    p = Projector(method="pca").fit(np.eye(6))
    with pytest.raises(DeltaAtlasError, match="dimension"):
        p.transform(np.ones((1, 4)))


def test_map_quality_good_and_random_maps():
    X, y = blobs(n_clusters=3, per=8)
    good = Projector(method="pca").fit_transform(X)
    q = map_quality(X, good, k=5)
    assert q["trustworthiness"] > 0.8 and q["knn_overlap"] > 0.5 and q["k"] == 5
    bad = map_quality(X, np.random.default_rng(0).normal(size=(len(X), 2)), k=5)
    assert bad["knn_overlap"] < q["knn_overlap"] and bad["trustworthiness"] < q["trustworthiness"]
    assert "%" in describe_quality(q) and "faithful" in describe_quality(q)
    tiny = map_quality(X[:2], good[:2])
    assert tiny["k"] == 0 and "Too few" in describe_quality(tiny)


def test_map_command(tmp_path, capsys):
    from core.cli import main
    from core.engine.vectors import make_table, write_vectors

    X, y = blobs(n_clusters=3, per=5)
    labels = pd.DataFrame({"name": [f"m{i}" for i in range(len(X))], "domain": [f"d{k}" for k in y],
                           "split": ["first", "second", "third", "x", "y"] * 3})
    path = write_vectors(make_table(labels["name"].tolist(), X, labels), tmp_path / "v.parquet")
    out = tmp_path / "map.csv"
    assert main(["map", "--vectors", str(path), "--method", "pca", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 clusters" in text and "domain=d" in text and "domain" in text and "faithful" in text
    frame = pd.read_csv(out)
    assert list(frame.columns[:4]) == ["name", "x", "y", "cluster"] and "domain" in frame.columns and len(frame) == 15
    assert main(["map", "--vectors", str(path), "--method", "pca", "--clusters", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_clusters"] == 2 and summary["label_silhouette"]["domain"] > 0.8 and len(summary["points"]) == 15
    assert main(["map", "--vectors", str(path), "--clusters", "many"]) == 2
    assert "'many' is not valid" in capsys.readouterr().err


def test_models_that_all_point_the_same_way():
    X = np.ones((8, 5)) * np.arange(1, 9)[:, None]                       # one direction, different lengths
    for method in ("umap", "tsne"):                                      # (t-SNE used to crash on this)
        p = Projector(method=method).fit(X)
        assert "same way" in p.note_ and np.allclose(p.embedding_, 0) and np.allclose(p.transform(X[:2]), 0)
    c = Clusterer().fit(np.vstack([X, -X[:3]]))
    assert c.n_clusters_ == 2 and set(c.scores_) == {2}


def test_label_silhouette_leaves_out_labels_held_by_one_model():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16))
    X = np.vstack([centres[0] + 0.05 * rng.normal(size=(5, 16)), centres[1] + 0.05 * rng.normal(size=(5, 16)),
                   centres[1] + 0.01 * rng.normal(size=(1, 16))])      # a one-model label sitting on group b
    labels = ["a"] * 5 + ["b"] * 5 + ["a+b"]
    assert label_silhouette(X, labels) == pytest.approx(label_silhouette(X[:10], labels[:10]))
    assert label_silhouette(X, labels) > 0.8


def test_lineage_disagreements_find_the_mislabelled_model():
    from core.engine.vectors import make_table
    from core.map.projection import lineage_disagreements

    X, y = blobs(n_clusters=3, per=5, dim=16)
    declared = [["gsm8k", "pubmedqa", "opc"][c] for c in y]
    declared[2] = "opc"                    # a gsm8k model whose card names another dataset
    declared[7] = ""                       # no dataset declared: not checked, does not vote
    declared[12] = "opc;gsm8k"             # two datasets, one of them what its neighbours say: agrees
    labels = pd.DataFrame({"name": [f"m{i}" for i in range(len(X))], "dataset": declared})
    odd = lineage_disagreements(labels, X, "dataset", k=3)
    assert list(odd.columns) == ["name", "declared", "neighbours_say", "agreement"]
    assert odd.to_dict("records") == [{"name": "m2", "declared": "opc", "neighbours_say": "gsm8k", "agreement": 0.0}]
    table = make_table(labels["name"].tolist(), X, labels)               # a vector table works the same
    assert lineage_disagreements(table, None, "dataset", k=3).equals(odd)
    assert len(lineage_disagreements(labels.assign(dataset="gsm8k"), X, "dataset")) == 0  # one value: nothing to say
    assert len(lineage_disagreements(labels, X, "dataset", k=0)) == 0
    with pytest.raises(DeltaAtlasError, match="'datasets' is not a label"):
        lineage_disagreements(labels, X, "datasets")
    with pytest.raises(DeltaAtlasError, match="one label row per model"):
        lineage_disagreements(labels[:4], X, "dataset")


# ---- big pools: the paths that keep the map page fast at 50,000 models ------------------------------------------

def test_neighbours_block_by_block_equal_the_full_matrix(monkeypatch):
    """_knn works block by block (and in float32 for cosine); it must find what the full n x n matrix finds."""
    import core.map.projection as projection

    X = np.random.default_rng(0).normal(size=(230, 12))
    full = 1 - cosine_similarities(X)
    np.fill_diagonal(full, -1)                                            # self first, as _knn has it
    expected = np.argsort(full, axis=1, kind="stable")[:, :6]
    monkeypatch.setattr(projection, "ROW_BLOCK", 17)                      # many blocks, a short last one
    indices, dists = projection._knn(X, 6)
    assert (indices == expected).all()
    assert np.allclose(dists[:, 1:], np.take_along_axis(full, expected, 1)[:, 1:], atol=1e-5)
    euclid, _ = projection._knn(X, 4, "euclidean")
    D = np.linalg.norm(X[:, None] - X[None], axis=2)
    np.fill_diagonal(D, -1)
    assert (euclid == np.argsort(D, axis=1, kind="stable")[:, :4]).all()


def test_lineage_disagreements_are_the_same_in_one_block_or_many(monkeypatch):
    import core.map.projection as projection
    from core.map.projection import lineage_disagreements

    X, y = blobs(n_clusters=4, per=60, dim=24, spread=0.05)
    rng = np.random.default_rng(3)
    declared = np.array([f"set{c}" for c in y], dtype=object)
    wrong = rng.choice(len(X), 12, replace=False)
    declared[wrong] = [f"set{(y[i] + 1) % 4}" for i in wrong]
    declared[:5] = ""                                                     # unlabelled: neither checked nor voting
    labels = pd.DataFrame({"name": [f"m{i}" for i in range(len(X))], "dataset": declared})
    monkeypatch.setattr(projection, "ROW_BLOCK", 10_000)                  # the whole matrix at once
    brute = lineage_disagreements(labels, X, "dataset", k=5)
    monkeypatch.setattr(projection, "ROW_BLOCK", 7)
    blocks = lineage_disagreements(labels, X, "dataset", k=5)
    assert blocks.equals(brute)
    assert set(brute["name"]) == {f"m{i}" for i in wrong if i >= 5}      # exactly the mislabelled models


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


def test_map_core_calls_scale_to_20000_models():
    """Clusters, the lineage check and a model's closest models on 20,000 models: the scalable paths (sampled
    silhouettes, neighbours block by block) in seconds, not the n x n matrices (3.2 GB at this size)."""
    import time

    from core.map.projection import lineage_disagreements

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 32))
    y = rng.integers(0, 5, size=20_000)
    X = (centres[y] + 0.5 * rng.normal(size=(len(y), 32))).astype(np.float32)
    start = time.perf_counter()
    groups = Clusterer(k_range=(2, 6)).fit(X)
    near = nearest_neighbours(X, 0, 8)
    odd = lineage_disagreements(pd.DataFrame({"name": np.arange(len(y)).astype(str), "dataset": y.astype(str)}),
                                X, "dataset", k=5)
    assert time.perf_counter() - start < 120                              # ~10-20 s on 2 busy cores, 1 thread
    assert groups.n_clusters_ == 5 and len(groups.sample_) == 4000 and groups.silhouette_ > 0.5
    assert len(near) == 8 and all(y[i] == y[0] for i, _ in near)
    assert len(odd) == 0                                                  # every model agrees with its neighbours
