"""Vectors of known structure and a one-thread fixture, shared by the tests of core.map."""
from __future__ import annotations

import numpy as np
import pytest


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
