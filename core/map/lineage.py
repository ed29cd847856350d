"""Lineage checked against behaviour: models whose declared label (e.g. the dataset a model card names) is not what
their nearest neighbours declare."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.errors import DeltaAtlasError
from core.map.geometry import _check_matrix, _knn
from core.pool.vectors import matrix

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

    ``table_or_labels`` is a vector table (core.pool.vectors format; ``vectors`` may then be None) or a frame with
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
