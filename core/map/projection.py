"""The map: 2-D projections (UMAP, PCA, t-SNE) and clusters of model vectors, on cosine geometry.

Delta Activations are compared by cosine similarity, so everything here works on directions: PCA and k-means see
L2-normalised rows, UMAP and t-SNE use the cosine metric. Estimators follow scikit-learn (``__init__`` stores,
``fit`` validates and returns self, explicit ``random_state``); the ``map`` command is at the bottom.

UMAP start-up: umap-learn compiles its numba kernels on first use. Its own nearest-neighbour search (NN-descent,
used from 4,096 points up) alone costs ~35 s of compilation, so we always hand UMAP exact cosine neighbours computed
here with numpy; what is left is ~10-20 s of compilation once per process, then ~4-7 s for 5,000 points (2 CPU cores).
For the same reason new points are placed by a weighted mean of their nearest fitted points (the start point of
UMAP's own transform, without its refinement epochs) rather than by ``umap.UMAP.transform``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DeltaAtlasError
from core.textio import spreadsheet_safe

log = logging.getLogger(__name__)

# hyper-parameters of the map, in one place
METHODS = ("umap", "pca", "tsne")
MAX_UMAP_NEIGHBOURS = 15      # umap-learn's default, reached from 45 points up (n_neighbors = n // 3 below that)
MIN_POINTS_FOR_MANIFOLD = 5   # fewer points: UMAP / t-SNE are meaningless, PCA is used instead
TSNE_MAX_PERPLEXITY = 30.0    # sklearn's default, lowered to (n - 1) / 3 for small pools
TRANSFORM_NEIGHBOURS = 5      # fitted points a new point is placed among
KMEANS_RESTARTS = (10, 2)     # k-means restarts up to / above 1,000 models (each k from 2 to 12 is tried)
CLUSTER_SAMPLE = 4000         # above this many models, k is chosen (and the silhouette measured) on a random sample
ROW_BLOCK = 1024              # rows per block when computing similarities, so memory stays O(block * n)


# ---------------------------------------------------------------------------------------------- cosine geometry
def _check_matrix(X, what: str = "vectors") -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DeltaAtlasError(f"The {what} must be a non-empty 2-D array [n_models, dim]; got shape {X.shape}.")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if bad.size:
        raise DeltaAtlasError(f"The {what} hold NaN or infinite values in row {int(bad[0])} "
                              f"({bad.size} row(s) in all): recompute those models' vectors.")
    return X


def normalize_rows(X: np.ndarray) -> np.ndarray:
    """Unit-length rows; an all-zero row (a model identical to its base) stays zero."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def cosine_similarities(X: np.ndarray, Y: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of every row of X with every row of Y (or of X): [n_x, n_y], in [-1, 1]."""
    A = normalize_rows(_check_matrix(X))
    B = A if Y is None else normalize_rows(_check_matrix(Y))
    if A.shape[1] != B.shape[1]:
        raise DeltaAtlasError(f"Cannot compare vectors of dimension {A.shape[1]} with vectors of dimension {B.shape[1]}: "
                              "they come from different base models or probe layers.")
    return np.clip(A @ B.T, -1.0, 1.0)


def cosine_distances(X: np.ndarray) -> np.ndarray:
    """1 - cosine similarity, [n, n], exactly 0 on the diagonal (what silhouette on cosine distance needs)."""
    D = 1.0 - cosine_similarities(X)
    np.fill_diagonal(D, 0.0)
    return np.maximum(D, 0.0)


def nearest_neighbours(X: np.ndarray, query: np.ndarray | int, k: int = 5) -> list[tuple[int, float]]:
    """The ``k`` rows of X most cosine-similar to ``query`` (a vector, or a row index: that row is left out)."""
    X = _check_matrix(X)
    if isinstance(query, (int, np.integer)):
        if not 0 <= query < len(X):
            raise DeltaAtlasError(f"Row {query} does not exist: the pool has {len(X)} models (rows 0 to {len(X) - 1}).")
        sims = cosine_similarities(X, X[query][None])[:, 0]
        sims[query] = -np.inf
    else:
        sims = cosine_similarities(X, np.asarray(query, dtype=np.float64).reshape(1, -1))[:, 0]
    order = np.argsort(-sims, kind="stable")[: max(int(k), 0)]
    return [(int(i), float(sims[i])) for i in order if np.isfinite(sims[i])]


def _distances(A: np.ndarray, B: np.ndarray, metric: str) -> np.ndarray:
    """Pairwise distances [len(A), len(B)]: 1 - dot product (rows already unit length) or euclidean."""
    if metric == "cosine":
        D = A @ B.T
        return np.subtract(1.0, D, out=D)
    return np.sqrt(np.maximum((A ** 2).sum(1)[:, None] + (B ** 2).sum(1)[None, :] - 2 * A @ B.T, 0))


def _knn(X: np.ndarray, k: int, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row, self first: indices [n, k] and distances [n, k].

    Block by block (memory O(ROW_BLOCK * n), never the n x n matrix). Cosine neighbours are found in float32, which
    is 2-4x faster than float64 and ranks alike except for near-ties (50,000 x 256: ~20-40 s on 2 busy cores)."""
    n, k = len(X), min(k, len(X))
    A = normalize_rows(X).astype(np.float32) if metric == "cosine" else np.asarray(X, dtype=np.float64)
    indices, dists = np.empty((n, k), dtype=np.int64), np.empty((n, k), dtype=np.float32)
    for start in range(0, n, ROW_BLOCK):
        D = _distances(A[start:start + ROW_BLOCK], A, metric)                 # [b, n]
        rows = np.arange(len(D))
        D[rows, start + rows] = -1.0                                          # self always first
        part = np.argpartition(D, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(D), 1))
        order = np.argsort(np.take_along_axis(D, part, 1), axis=1, kind="stable")
        indices[start:start + len(D)] = np.take_along_axis(part, order, 1)
        dists[start:start + len(D)] = np.maximum(np.take_along_axis(D, indices[start:start + len(D)], 1), 0)
    return indices, dists


# ---------------------------------------------------------------------------------------------- projection
class Projector:
    """Projects model vectors to 2-D for the map. ``embedding_`` holds the fitted points; ``method_`` the method
    actually used (PCA stands in below 5 points) and ``note_`` why, in plain words."""

    def __init__(self, method: str = "umap", n_components: int = 2, n_neighbors: int | None = None,
                 min_dist: float = 0.1, metric: str = "cosine", random_state: int = 0):
        self.method = method
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.random_state = random_state

    def fit(self, X: np.ndarray) -> "Projector":
        if self.method not in METHODS:
            raise DeltaAtlasError(f"Unknown projection method {self.method!r}: use one of {', '.join(METHODS)}.")
        if self.metric not in ("cosine", "euclidean"):
            raise DeltaAtlasError(f"Unknown metric {self.metric!r}: use cosine or euclidean.")
        X = _check_matrix(X)
        n = len(X)
        self.method_, self.note_ = self.method, ""
        if self.method != "pca" and n < MIN_POINTS_FOR_MANIFOLD:
            self.method_ = "pca"
            self.note_ = (f"Only {n} model(s): {self.method.upper()} needs at least {MIN_POINTS_FOR_MANIFOLD}, "
                          "so the map shows a PCA projection instead.")
            log.warning(self.note_)
        self.n_neighbors_ = self.n_neighbors or min(MAX_UMAP_NEIGHBOURS, max(2, n // 3))
        self.n_neighbors_ = max(2, min(self.n_neighbors_, n - 1)) if n > 2 else 1
        self._X = self._prepare(X)
        if n > 1 and np.ptp(self._X, axis=0).max() < 1e-12:   # one direction only (t-SNE would even crash)
            self.method_ = "pca"
            self.note_ = f"All {n} models point the same way: they sit on one point of the map."
        fit = {"umap": self._fit_umap, "pca": self._fit_pca, "tsne": self._fit_tsne}[self.method_]
        self.embedding_ = np.asarray(fit(self._X), dtype=np.float64)            # [n, n_components]
        return self

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        return normalize_rows(X) if self.metric == "cosine" else X

    def _fit_pca(self, X: np.ndarray) -> np.ndarray:
        from sklearn.decomposition import PCA

        if np.ptp(X, axis=0).max() < 1e-12:               # one model, or one direction: the origin
            self._pca = None
            return np.zeros((1, self.n_components))
        k = min(self.n_components, X.shape[0], X.shape[1])
        self._pca = PCA(n_components=k, random_state=self.random_state).fit(X)
        return self._pad(self._pca.transform(X))

    def _pad(self, Z: np.ndarray) -> np.ndarray:
        """Zero columns up to n_components (PCA of 1 or 2 points has fewer components)."""
        return np.hstack([Z, np.zeros((len(Z), self.n_components - Z.shape[1]))]) if Z.shape[1] < self.n_components else Z

    def _fit_umap(self, X: np.ndarray) -> np.ndarray:
        import umap  # slow import (numba): only when a UMAP map is asked for

        indices, dists = _knn(X, self.n_neighbors_, self.metric)
        model = umap.UMAP(n_components=self.n_components, n_neighbors=self.n_neighbors_, min_dist=self.min_dist,
                          metric=self.metric, random_state=self.random_state, precomputed_knn=(indices, dists),
                          init="spectral" if len(X) > self.n_neighbors_ + 1 else "random")
        with warnings.catch_warnings():  # "n_jobs overridden by random_state", "no search index": both expected
            warnings.simplefilter("ignore", UserWarning)
            return model.fit_transform(X)

    def _fit_tsne(self, X: np.ndarray) -> np.ndarray:
        from sklearn.manifold import TSNE

        perplexity = max(1.0, min(TSNE_MAX_PERPLEXITY, (len(X) - 1) / 3))
        tsne = TSNE(n_components=self.n_components, perplexity=perplexity, metric=self.metric, init="pca",
                    learning_rate="auto", random_state=self.random_state)
        return tsne.fit_transform(X)

    def transform(self, Y: np.ndarray) -> np.ndarray:
        """Place new vectors on the fitted map: PCA projects them; UMAP and t-SNE put each one at a weighted mean of
        its nearest fitted points (weight 1 for the nearest, decaying with the extra distance)."""
        if not hasattr(self, "embedding_"):
            raise DeltaAtlasError("This Projector is not fitted yet: call fit(vectors) before transform.")
        Y = self._prepare(_check_matrix(Y, "new vectors"))
        if Y.shape[1] != self._X.shape[1]:
            raise DeltaAtlasError(f"New vectors have dimension {Y.shape[1]} but the map was fitted on dimension "
                                  f"{self._X.shape[1]}: embed them against the same base model.")
        if self.method_ == "pca":
            return self._pad(self._pca.transform(Y)) if self._pca is not None else np.zeros((len(Y), self.n_components))
        k = min(TRANSFORM_NEIGHBOURS, len(self._X))
        D = _distances(Y, self._X, self.metric)                                 # [m, n]
        nearest = np.argsort(D, axis=1, kind="stable")[:, :k]                   # [m, k]
        d = np.take_along_axis(D, nearest, 1)                                   # [m, k], ascending
        extra = d - d[:, :1]
        scale = np.maximum(extra.mean(axis=1, keepdims=True), 1e-9)
        weights = np.exp(-extra / scale)                                        # nearest gets weight 1
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("mk,mkc->mc", weights, self.embedding_[nearest])

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).embedding_


def warm_up(random_state: int = 0) -> float:
    """Compile umap-learn's numba kernels now (e.g. in a background thread when the app starts) so that the first
    real map is fast; returns the seconds it took (~8-20 s the first time in a process, ~0 after)."""
    import time

    start = time.perf_counter()
    Projector(random_state=random_state).fit(np.random.default_rng(random_state).normal(size=(20, 8)))
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- clustering
def label_silhouette(X: np.ndarray, labels) -> float:
    """Silhouette of ``labels`` on the cosine-distance matrix (the paper's measure), in [-1, 1].

    Rows whose label is missing (None, NaN or "") are left out, and so are labels held by one model only: a group
    of one has no silhouette of its own, and it wrecks its neighbours' (a "math+coding" mixture next to the coding
    models makes them look misplaced). NaN when it is undefined: fewer than 2 labels left.
    """
    from sklearn.metrics import silhouette_score

    X = _check_matrix(X)
    labels = np.asarray(["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in labels])
    if len(labels) != len(X):
        raise DeltaAtlasError(f"{len(labels)} labels for {len(X)} vectors: give one label per model.")
    values, counts = np.unique(labels, return_counts=True)
    keep = (labels != "") & np.isin(labels, values[counts > 1])
    n_labels = len(set(labels[keep]))
    if n_labels < 2 or n_labels >= keep.sum():
        return float("nan")
    return float(silhouette_score(cosine_distances(X[keep]), labels[keep], metric="precomputed"))


class Clusterer:
    """Clusters of model vectors on cosine geometry (k-means on L2-normalised rows, or average-linkage
    agglomerative on cosine distance). With ``n_clusters="auto"`` k is the one with the best silhouette in
    ``k_range``. Clusters are numbered by size, 0 the largest.

    Above ``sample_size`` models (silhouettes need every pairwise distance: 50,000 models would take 20 GB) the
    clusters are found and scored on a random sample of that many; then every model joins the nearest cluster
    centre (k-means refines the centres on all models). ``sample_`` holds the sampled rows, or None."""

    def __init__(self, n_clusters: int | str = "auto", k_range: tuple[int, int] = (2, 12), random_state: int = 0,
                 algorithm: str = "kmeans", sample_size: int = CLUSTER_SAMPLE):
        self.n_clusters = n_clusters
        self.k_range = k_range
        self.random_state = random_state
        self.algorithm = algorithm
        self.sample_size = sample_size

    def fit(self, X: np.ndarray) -> "Clusterer":
        if self.algorithm not in ("kmeans", "agglomerative"):
            raise DeltaAtlasError(f"Unknown clustering algorithm {self.algorithm!r}: use kmeans or agglomerative.")
        X = normalize_rows(_check_matrix(X))
        n = len(X)
        self.scores_: dict[int, float] = {}
        if self.n_clusters == "auto":
            low, high = int(self.k_range[0]), int(self.k_range[1])
            if low < 2 or high < low:
                raise DeltaAtlasError(f"k_range {self.k_range} is not valid: give (low, high) with 2 <= low <= high.")
            candidates = range(low, min(high, n - 1) + 1)
        else:
            k = self.n_clusters
            if isinstance(k, str) and k.isdigit():
                k = int(k)
            if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
                raise DeltaAtlasError(f"n_clusters={self.n_clusters!r} is not valid for {n} models: use 'auto' or a "
                                      f"whole number from 1 to {n}.")
            candidates = [int(k)]
        self.sample_ = None
        if n > int(self.sample_size) > max(candidates, default=1):
            rng = np.random.default_rng(self.random_state)
            self.sample_ = np.sort(rng.choice(n, int(self.sample_size), replace=False))
        S = X if self.sample_ is None else X[self.sample_]                   # the rows clustered and scored
        best_labels, best_score = np.zeros(len(S), dtype=int), float("nan")
        D = cosine_distances(S)
        for k in candidates:
            labels = self._cluster(S, k)
            if len(candidates) > 1 and len(set(labels.tolist())) < k:   # duplicates: fewer clusters than asked
                continue
            score = _precomputed_silhouette(D, labels)
            if not math.isnan(score):
                self.scores_[k] = score
            if len(candidates) == 1 or (not math.isnan(score) and not score <= best_score):
                best_labels, best_score = labels, score
        if self.sample_ is not None:
            best_labels = self._extend(X, S, best_labels)
            best_score = _precomputed_silhouette(D, best_labels[self.sample_])
        self.labels_ = _by_size(best_labels)
        self.n_clusters_ = int(len(set(self.labels_)))
        self.silhouette_ = best_score
        return self

    def _cluster(self, X: np.ndarray, k: int) -> np.ndarray:
        if k == 1:
            return np.zeros(len(X), dtype=int)
        if self.algorithm == "kmeans":
            from sklearn.cluster import KMeans
            from sklearn.exceptions import ConvergenceWarning

            restarts = KMEANS_RESTARTS[0] if len(X) <= 1000 else KMEANS_RESTARTS[1]
            with warnings.catch_warnings():                 # duplicate points: fewer distinct clusters than k
                warnings.simplefilter("ignore", ConvergenceWarning)
                return KMeans(n_clusters=k, n_init=restarts, random_state=self.random_state).fit_predict(X)
        from sklearn.cluster import AgglomerativeClustering

        return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(X)

    def _extend(self, X: np.ndarray, S: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Labels for every row of X from the clusters of the sample S: k-means starts from the sample's centres
        and refines them on all rows; agglomerative clusters take in each row by its nearest centre (cosine)."""
        groups = np.unique(labels)
        centres = np.stack([S[labels == g].mean(axis=0) for g in groups])    # [k, d]
        if len(groups) == 1:
            return np.zeros(len(X), dtype=int)
        if self.algorithm == "kmeans":
            from sklearn.cluster import KMeans
            from sklearn.exceptions import ConvergenceWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                return KMeans(n_clusters=len(groups), init=centres, n_init=1,
                              random_state=self.random_state).fit_predict(X)
        nearest = np.concatenate([np.argmax(X[i:i + ROW_BLOCK * 8] @ normalize_rows(centres).T, axis=1)
                                  for i in range(0, len(X), ROW_BLOCK * 8)])
        return groups[nearest]


def _precomputed_silhouette(D: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    n_labels = len(set(labels.tolist()))
    return float(silhouette_score(D, labels, metric="precomputed")) if 2 <= n_labels < len(labels) else float("nan")


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0, 1, ... from the largest (ties: first seen)."""
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(values)), key=lambda i: (-counts[i], first[i]))
    mapping = {values[i]: rank for rank, i in enumerate(order)}
    return np.array([mapping[v] for v in labels], dtype=int)


# ---------------------------------------------------------------------------------------------- lineage
LABEL_SEPARATOR = ";"  # several values in one label cell (a model card naming two datasets)


def _label_values(value) -> tuple[str, ...]:
    """The values of one label cell, in order, without repeats; () when it is missing (None, NaN or "")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ()
    return tuple(dict.fromkeys(v.strip() for v in str(value).split(LABEL_SEPARATOR) if v.strip()))


def lineage_disagreements(table_or_labels: pd.DataFrame, vectors: np.ndarray | None = None, column: str = "dataset",
                          k: int = 5) -> pd.DataFrame:
    """Models whose declared label (``column``, e.g. the dataset a model card names) is not what most of their ``k``
    nearest neighbours declare, by cosine similarity of the full vectors: lineage checked against behaviour.

    ``table_or_labels`` is a vector table (core.engine.vectors format; ``vectors`` may then be None) or a frame with
    ``name`` and ``column``, one row per row of ``vectors``. A cell may hold several values separated by ``;``: a
    neighbour votes for each of its values, and a model agrees when the most voted value (any of them, on a tie) is
    one of its own. Models with an empty cell are neither checked nor counted as neighbours.
    Returns name, declared, neighbours_say (the most voted value; on a tie, the nearest neighbour's) and agreement
    (the share of the k neighbours that declare one of the model's values), lowest agreement first; no rows when
    fewer than 2 models are labelled or all declare the same.
    """
    columns = ["name", "declared", "neighbours_say", "agreement"]
    frame = table_or_labels
    if column not in frame.columns:
        known = ", ".join(c for c in frame.columns if c not in ("name", "vector")) or "(none)"
        raise DeltaAtlasError(f"{column!r} is not a label of these models: choose one of {known}.")
    if vectors is None:
        from core.engine.vectors import matrix

        vectors = matrix(frame)
    X = _check_matrix(vectors)
    if len(frame) != len(X):
        raise DeltaAtlasError(f"{len(frame)} labels for {len(X)} vectors: give one label row per model.")
    values = [_label_values(v) for v in frame[column]]
    labelled = np.flatnonzero([bool(v) for v in values])
    k = min(int(k), len(labelled) - 1)
    if k < 1 or len({v for i in labelled for v in values[i]}) < 2:
        return pd.DataFrame(columns=columns)
    nearest, _ = _knn(X[labelled], k + 1, "cosine")                          # [m, k + 1], self first
    rows = []
    for row, neighbours in zip(labelled, labelled[nearest[:, 1:]]):
        own = set(values[row])
        votes: dict[str, int] = {}
        for j in neighbours:                                                  # nearest first: ties go to it
            for value in values[j]:
                votes[value] = votes.get(value, 0) + 1
        top = max(votes.values())
        winners = [v for v, n in votes.items() if n == top]
        if own & set(winners):
            continue
        rows.append({"name": str(frame["name"].iloc[row]), "declared": LABEL_SEPARATOR.join(values[row]),
                     "neighbours_say": winners[0],
                     "agreement": float(np.mean([bool(own & set(values[j])) for j in neighbours]))})
    return pd.DataFrame(rows, columns=columns).sort_values("agreement", kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- map quality
def map_quality(X: np.ndarray, embedding: np.ndarray, k: int = 10) -> dict:
    """How faithful the map is: trustworthiness (sklearn, cosine in the full space; 1 = no false neighbours on the
    map, ~0.5 = random) and knn_overlap (share of each model's k nearest neighbours in the full space that are
    also among its k nearest on the map). ``k`` shrinks for small pools; NaN below 3 models."""
    from sklearn.manifold import trustworthiness

    X, E = _check_matrix(X), _check_matrix(embedding, "map coordinates")
    if len(X) != len(E):
        raise DeltaAtlasError(f"{len(X)} vectors but {len(E)} map points: give one map point per model.")
    k = min(int(k), math.ceil(len(X) / 2) - 1)
    if k < 1:
        return {"trustworthiness": float("nan"), "knn_overlap": float("nan"), "k": 0, "n": len(X)}
    trust = trustworthiness(X, E, n_neighbors=k, metric="cosine")
    full, _ = _knn(X, k + 1, "cosine")
    flat, _ = _knn(E, k + 1, "euclidean")
    overlap = np.mean([len(set(a[1:]) & set(b[1:])) / k for a, b in zip(full, flat)])
    return {"trustworthiness": float(trust), "knn_overlap": float(overlap), "k": int(k), "n": len(X)}


def describe_quality(q: dict) -> str:
    """The map's quality in plain words, for people who do not read trustworthiness scores."""
    if not q.get("k") or math.isnan(q.get("knn_overlap", float("nan"))):
        return "Too few models to judge how faithful the map is."
    overlap, trust, k = q["knn_overlap"], q["trustworthiness"], q["k"]
    verdict = ("faithful" if overlap >= 0.6 and trust >= 0.9 else
               "fairly faithful" if overlap >= 0.35 and trust >= 0.75 else "only a rough sketch")
    return (f"The map is {verdict}: on average {overlap:.0%} of each model's {k} closest models (by Delta Activations) "
            f"are also among its {k} closest points on the map, and models drawn close together are truly close "
            f"with a trustworthiness of {trust:.2f} (1 = never misleading, 0.5 = no better than random). "
            "Distances on the map are a guide; the neighbour lists use the exact similarities.")


# ---------------------------------------------------------------------------------------------- the map of a table
def project_table(table: pd.DataFrame, method: str = "umap", n_clusters: int | str = "auto",
                  random_state: int = 0) -> tuple[pd.DataFrame, dict]:
    """Map and cluster a vector table (core.engine.vectors format): a frame (name, x, y, cluster, labels...) and a summary
    (clusters with their most common labels, silhouette of each label column, map quality)."""
    from core.engine.vectors import label_columns, matrix

    X = matrix(table)
    projector = Projector(method=method, random_state=random_state).fit(X)
    clusterer = Clusterer(n_clusters=n_clusters, random_state=random_state).fit(X)
    labels = label_columns(table)
    points = pd.DataFrame({"name": table["name"].astype(str), "x": projector.embedding_[:, 0],
                           "y": projector.embedding_[:, 1], "cluster": clusterer.labels_})
    points = pd.concat([points, table[labels].reset_index(drop=True).astype(str)], axis=1)
    quality = map_quality(X, projector.embedding_)
    summary = {
        "n_models": len(table), "method": projector.method_, "note": projector.note_,
        "n_clusters": clusterer.n_clusters_, "cluster_silhouette": _nan_to_none(clusterer.silhouette_),
        "k_scores": {int(k): v for k, v in clusterer.scores_.items()},
        "clusters": _describe_clusters(points, labels),
        "label_silhouette": {c: _nan_to_none(label_silhouette(X, points[c].tolist())) for c in labels
                             if 1 < points[c].replace("", np.nan).nunique() < len(points)},
        "quality": {k: _nan_to_none(v) for k, v in quality.items()}, "quality_text": describe_quality(quality),
    }
    return points, summary


def _describe_clusters(points: pd.DataFrame, labels: list[str]) -> list[dict]:
    """Each cluster's size, members and most common value of every label that repeats (≤ 20 values)."""
    useful = [c for c in labels if 1 <= points[c].replace("", np.nan).nunique() <= 20
              and points[c].replace("", np.nan).dropna().duplicated().any()]
    clusters = []
    for cluster, group in points.groupby("cluster", sort=True):
        common = {}
        for column in useful:
            values = group[column][group[column] != ""]
            if len(values):
                top = values.value_counts()
                common[column] = {"value": str(top.index[0]), "count": int(top.iloc[0]), "of": int(len(group))}
        clusters.append({"cluster": int(cluster), "size": int(len(group)), "members": group["name"].tolist(),
                         "most_common": common})
    return clusters


def _nan_to_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vectors", required=True, help="vector file from `python -m core embed` (.parquet or .csv)")
    parser.add_argument("--method", choices=METHODS, default="umap", help="projection (default umap)")
    parser.add_argument("--clusters", default="auto", help="number of clusters, or auto (best silhouette, 2-12)")
    parser.add_argument("--color-by", default=None, help="label column to summarise clusters by (default: domain "
                        "if present, else every repeating label)")
    parser.add_argument("--out", default=None, help="write name, x, y, cluster and labels to this CSV file")
    parser.add_argument("--seed", type=int, default=0, help="random state of the projection and clustering")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def main(args: argparse.Namespace) -> int:
    from core.engine.vectors import read_vectors

    table = read_vectors(args.vectors)
    if args.color_by and args.color_by not in table.columns:
        raise DeltaAtlasError(f"--color-by {args.color_by!r} is not a label of {args.vectors}: choose one of "
                              f"{', '.join(c for c in table.columns if c not in ('name', 'vector')) or '(none)'}.")
    points, summary = project_table(table, method=args.method, n_clusters=args.clusters, random_state=args.seed)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        spreadsheet_safe(points).to_csv(args.out, index=False)
        summary["out"] = str(args.out)
    if args.json:
        print(json.dumps({**summary, "points": points[["name", "x", "y", "cluster"]].to_dict("records")}, indent=1))
    else:
        color = args.color_by or ("domain" if "domain" in points.columns else None)
        print(format_map_summary(summary, color))
    return 0


def format_map_summary(summary: dict, color_by: str | None = None) -> str:
    """The map command's text output: clusters, label silhouettes, map quality."""
    lines = [f"{summary['n_models']} models, {summary['method'].upper()} map, {summary['n_clusters']} clusters"
             + (f" (silhouette {summary['cluster_silhouette']:.3f})" if summary["cluster_silhouette"] is not None else "")]
    if summary["note"]:
        lines.append(summary["note"])
    lines += ["", f"{'cluster':>7}  {'size':>4}  most common labels"]
    for c in summary["clusters"]:
        common = {k: v for k, v in c["most_common"].items() if color_by is None or k == color_by}
        text = ", ".join(f"{k}={v['value']} ({v['count']}/{v['of']})" for k, v in common.items())
        lines.append(f"{c['cluster']:>7}  {c['size']:>4}  {text or ', '.join(c['members'][:4])}")
    lines += ["", "How well each label groups the models (silhouette on cosine distance; 1 = perfect, 0 = none):"]
    for column, value in summary["label_silhouette"].items():
        lines.append(f"  {column:<16} {'n/a' if value is None else f'{value:+.3f}'}")
    lines += ["", summary["quality_text"]]
    if summary.get("out"):
        lines.append(f"Map written to {summary['out']}.")
    return "\n".join(lines)
