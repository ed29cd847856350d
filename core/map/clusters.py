"""Clusters of model vectors on cosine geometry, and the silhouette of a labelling (the paper's measure).

``Clusterer`` is a scikit-learn style estimator (``__init__`` stores, ``fit`` validates and returns self, explicit
``random_state``); above ``CLUSTER_SAMPLE`` models k is chosen on a random sample, since silhouettes need every
pairwise distance.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from core.errors import DeltaAtlasError
from core.map.geometry import ROW_BLOCK, _check_matrix, cosine_distances, normalize_rows

KMEANS_RESTARTS = (10, 2)     # k-means restarts up to / above 1,000 models (each k from 2 to 12 is tried)
CLUSTER_SAMPLE = 4000         # above this many models, k is chosen (and the silhouette measured) on a random sample


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
