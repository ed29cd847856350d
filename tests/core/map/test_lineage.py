"""The lineage check: declared labels against the nearest neighbours."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.errors import DeltaAtlasError
from tests.core.vector_data import blobs, one_thread  # noqa: F401  (one_thread: an autouse fixture)


def test_lineage_disagreements_find_the_mislabelled_model():
    from core.map.lineage import lineage_disagreements
    from core.pool.vectors import make_table

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


def test_lineage_disagreements_are_the_same_in_one_block_or_many(monkeypatch):
    import core.map.geometry as geometry
    from core.map.lineage import lineage_disagreements

    X, y = blobs(n_clusters=4, per=60, dim=24, spread=0.05)
    rng = np.random.default_rng(3)
    declared = np.array([f"set{c}" for c in y], dtype=object)
    wrong = rng.choice(len(X), 12, replace=False)
    declared[wrong] = [f"set{(y[i] + 1) % 4}" for i in wrong]
    declared[:5] = ""                                                     # unlabelled: neither checked nor voting
    labels = pd.DataFrame({"name": [f"m{i}" for i in range(len(X))], "dataset": declared})
    monkeypatch.setattr(geometry, "ROW_BLOCK", 10_000)                    # the whole matrix at once
    brute = lineage_disagreements(labels, X, "dataset", k=5)
    monkeypatch.setattr(geometry, "ROW_BLOCK", 7)
    blocks = lineage_disagreements(labels, X, "dataset", k=5)
    assert blocks.equals(brute)
    assert set(brute["name"]) == {f"m{i}" for i in wrong if i >= 5}      # exactly the mislabelled models
