"""The map: 2-D projections (UMAP, PCA, t-SNE) of model vectors, how faithful they are, and the ``map`` command.

Delta Activations are compared by cosine similarity, so everything here works on directions: PCA sees
L2-normalised rows, UMAP and t-SNE use the cosine metric (the geometry is in core.map.geometry, the clusters in
core.map.clusters, the lineage check in core.map.lineage). ``Projector`` follows scikit-learn (``__init__`` stores,
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
from core.map.clusters import Clusterer, label_silhouette
from core.map.geometry import _check_matrix, _distances, _knn, normalize_rows
from core.pool.vectors import label_columns, matrix, read_vectors
from core.textio import spreadsheet_safe

log = logging.getLogger(__name__)

# hyper-parameters of the map, in one place
METHODS = ("umap", "pca", "tsne")
MAX_UMAP_NEIGHBOURS = 15      # umap-learn's default, reached from 45 points up (n_neighbors = n // 3 below that)
MIN_POINTS_FOR_MANIFOLD = 5   # fewer points: UMAP / t-SNE are meaningless, PCA is used instead
TSNE_MAX_PERPLEXITY = 30.0    # sklearn's default, lowered to (n - 1) / 3 for small pools
TRANSFORM_NEIGHBOURS = 5      # fitted points a new point is placed among


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
            self.note_ = one_point_note(X) or f"All {n} models sit on one point of the map."
        fit = {"umap": self._fit_umap, "pca": self._fit_pca, "tsne": self._fit_tsne}[self.method_]
        self.embedding_ = np.asarray(fit(self._X), dtype=np.float64)            # [n, n_components]
        return self

    @classmethod
    def fitted_on(cls, X: np.ndarray, embedding: np.ndarray, method: str = "umap",
                  metric: str = "cosine") -> "Projector":
        """A projector for a map already drawn (``embedding`` [n, 2] of ``X`` [n, d], e.g. from a cache): it places new
        vectors without fitting the map again. PCA is refitted (cheap and exact); UMAP and t-SNE place by neighbours
        (see ``transform``), which needs only the points."""
        if method == "pca":
            return cls(method="pca", metric=metric).fit(X)
        projector = cls(method=method, metric=metric)
        projector._X = projector._prepare(_check_matrix(X))
        projector.embedding_ = np.asarray(embedding, dtype=np.float64)
        if projector.embedding_.shape != (len(projector._X), projector.n_components):
            raise DeltaAtlasError(f"A map of {projector.embedding_.shape} points does not belong to {len(projector._X)} "
                                  "vectors: draw the map again.")
        projector.method_, projector.note_ = method, ""
        return projector

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        return normalize_rows(X) if self.metric == "cosine" else X

    def _fit_pca(self, X: np.ndarray) -> np.ndarray:
        from sklearn.decomposition import PCA

        if np.ptp(X, axis=0).max() < 1e-12:               # one model, or one direction: the origin
            self._pca = None
            return np.zeros((len(X), self.n_components))
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


def one_point_note(X: np.ndarray) -> str:
    """Why every model of ``X`` [n, d] sits on one point of the map, in plain words ("" when they do not)."""
    X = np.asarray(X, dtype=np.float64)
    if len(X) < 2:
        return ""
    if not np.abs(X).max(initial=0.0):
        return (f"All {len(X)} models have a zero vector (they change nothing the probes can see): they sit on one "
                "point of the map.")
    if np.ptp(normalize_rows(X), axis=0).max() < 1e-12:
        return f"All {len(X)} models point the same way: they sit on one point of the map."
    return ""


def warm_up(random_state: int = 0) -> float:
    """Compile umap-learn's numba kernels now (e.g. in a background thread when the app starts) so that the first
    real map is fast; returns the seconds it took (~8-20 s the first time in a process, ~0 after)."""
    import time

    start = time.perf_counter()
    Projector(random_state=random_state).fit(np.random.default_rng(random_state).normal(size=(20, 8)))
    return time.perf_counter() - start


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
    """Map and cluster a vector table (core.pool.vectors format): a frame (name, x, y, cluster, labels...) and a summary
    (clusters with their most common labels, silhouette of each label column, map quality)."""
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
