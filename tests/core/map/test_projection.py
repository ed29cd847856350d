"""Projector, map quality and the map command on vectors whose structure is known."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.errors import DeltaAtlasError
from core.map.clusters import Clusterer
from core.map.geometry import nearest_neighbours
from core.map.projection import Projector, describe_quality, map_quality
from tests.core.vector_data import blobs, one_thread  # noqa: F401  (one_thread: an autouse fixture)


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
    from core.pool.vectors import make_table, write_vectors

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


# ---- big pools: the paths that keep the map page fast at 50,000 models ------------------------------------------


def test_map_core_calls_scale_to_20000_models():
    """Clusters, the lineage check and a model's closest models on 20,000 models: the scalable paths (sampled
    silhouettes, neighbours block by block) in seconds, not the n x n matrices (3.2 GB at this size)."""
    import time

    from core.map.lineage import lineage_disagreements

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


@pytest.mark.parametrize("X, words", [
    (np.ones((6, 4)), "All 6 models point the same way"),
    (np.zeros((6, 4)), "All 6 models have a zero vector"),
    (np.arange(1.0, 7.0)[:, None], "All 6 models point the same way"),      # width 1: every vector points one way
])
def test_a_pool_on_one_point_is_mapped_with_a_note_not_a_crash(X, words, tmp_path, capsys):
    from core.cli import main
    from core.map.projection import one_point_note, project_table
    from core.pool.vectors import make_table, write_vectors

    table = make_table([f"m{i}" for i in range(len(X))], X)
    points, summary = project_table(table)
    assert len(points) == len(X) and np.allclose(points[["x", "y"]].to_numpy(), 0.0)
    assert summary["note"].startswith(words) and one_point_note(X).startswith(words)
    path = write_vectors(table, tmp_path / "v.parquet")
    assert main(["map", "--vectors", str(path), "--out", str(tmp_path / "map.csv")]) == 0
    assert words in capsys.readouterr().out and (tmp_path / "map.csv").is_file()
    assert one_point_note(np.eye(3)) == ""
