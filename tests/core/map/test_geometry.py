"""Cosine geometry: similarities, neighbours, and the block-by-block path of big pools."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import DeltaAtlasError
from core.map.geometry import cosine_similarities, nearest_neighbours


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


def test_neighbours_block_by_block_equal_the_full_matrix(monkeypatch):
    """_knn works block by block (and in float32 for cosine); it must find what the full n x n matrix finds."""
    import core.map.geometry as geometry

    X = np.random.default_rng(0).normal(size=(230, 12))
    full = 1 - cosine_similarities(X)
    np.fill_diagonal(full, -1)                                            # self first, as _knn has it
    expected = np.argsort(full, axis=1, kind="stable")[:, :6]
    monkeypatch.setattr(geometry, "ROW_BLOCK", 17)                        # many blocks, a short last one
    indices, dists = geometry._knn(X, 6)
    assert (indices == expected).all()
    assert np.allclose(dists[:, 1:], np.take_along_axis(full, expected, 1)[:, 1:], atol=1e-5)
    euclid, _ = geometry._knn(X, 4, "euclidean")
    D = np.linalg.norm(X[:, None] - X[None], axis=2)
    np.fill_diagonal(D, -1)
    assert (euclid == np.argsort(D, axis=1, kind="stable")[:, :4]).all()
