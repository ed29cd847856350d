"""The domain lens: it sees domain through a shared answer form that fools plain cosine, and refuses pools it
cannot be fitted on with a message that says what to do."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.errors import DeltaAtlasError
from core.map.lens import DomainLens
from core.pool.vectors import make_table
from core.reuse.task import rank, similarities

DOMAINS, FORMATS, PER_CELL, DIM = ("law", "math", "med", "code"), ("letter", "prose", "label"), 3, 64


def missing_form(domain: str) -> str:
    """The one answer form each domain's models never use (the task will use it)."""
    return FORMATS[DOMAINS.index(domain) % len(FORMATS)]


def format_heavy_pool(seed: int = 0):
    """Vectors = a strong answer-form direction + a weak domain direction + noise; each domain has two of the three
    answer forms, so an answer form is shared across domains and never decides one."""
    rng = np.random.default_rng(seed)
    domain_dir = {d: rng.normal(size=DIM) for d in DOMAINS}
    format_dir = {f: 4.0 * rng.normal(size=DIM) for f in FORMATS}
    rows, vectors = [], []
    for d in DOMAINS:
        for f in FORMATS:
            if f == missing_form(d):
                continue
            for i in range(PER_CELL):
                vectors.append(domain_dir[d] + format_dir[f] + 0.3 * rng.normal(size=DIM))
                rows.append({"name": f"{d}-{f}-{i}", "domain": d, "format": f})
    return pd.DataFrame(rows), np.asarray(vectors), domain_dir, format_dir


def test_lens_finds_the_domain_where_the_answer_form_misleads_cosine():
    frame, X, domain_dir, format_dir = format_heavy_pool()
    table = make_table(list(frame["name"]), X.astype(np.float32), frame)
    rng = np.random.default_rng(1)
    right_raw = right_lens = 0
    for d in DOMAINS:       # a task of domain d, in the answer form none of d's models uses
        for _ in range(3):
            task = domain_dir[d] + format_dir[missing_form(d)] + 0.3 * rng.normal(size=DIM)
            right_raw += rank(task, table)["domain"].iloc[0] == d
            right_lens += rank(task, table, compare="domain-lens")["domain"].iloc[0] == d
    assert right_raw <= 3               # plain cosine follows the answer form to another domain
    assert right_lens >= 10             # the lens weighs the form little: 12 tasks


def test_lens_transform_shape_mixtures_and_scale():
    frame, X, _, _ = format_heavy_pool()
    labels = list(frame["domain"])
    labels[0] = "law+math"             # a mixture is left out of the fit, still transformed
    lens = DomainLens().fit(X, labels)
    assert lens.domains_ == sorted(DOMAINS)
    Z = lens.transform(X)
    assert Z.shape == (len(X), len(DOMAINS) - 1)
    assert np.allclose(lens.transform(X[3] * 7.0), Z[3])  # rows are compared as directions
    assert lens.transform(X[0]).shape == (1, len(DOMAINS) - 1)


@pytest.mark.parametrize("labels, message", [
    (["a", "a", "b", "b"], "at least 3 domains"),
    (["a", "b", "c", "c"], "at least 3 domains"),          # a and b have one model each
    (["a+b", "a+b", "c", "c"], "at least 3 domains"),
    (["a", "b"], "4 vectors but 2 labels"),
])
def test_lens_refuses_pools_it_cannot_fit(labels, message):
    X = np.random.default_rng(0).normal(size=(4, 8))
    with pytest.raises(DeltaAtlasError, match=message):
        DomainLens().fit(X, labels)


def test_lens_checks_its_input():
    with pytest.raises(DeltaAtlasError, match="not fitted"):
        DomainLens().transform(np.ones((1, 3)))
    frame, X, _, _ = format_heavy_pool()
    lens = DomainLens().fit(X, frame["domain"])
    with pytest.raises(DeltaAtlasError, match="fitted on 64"):
        lens.transform(np.ones((1, 3)))
    with pytest.raises(DeltaAtlasError, match="finite"):
        DomainLens().fit(np.full((12, 4), np.nan), ["a", "b", "c"] * 4)


def test_comparisons_by_name():
    frame, X, _, _ = format_heavy_pool()
    table = make_table(list(frame["name"]), X.astype(np.float32), frame)
    with pytest.raises(DeltaAtlasError, match="Unknown comparison 'euclid'"):
        similarities(X[0], table, "euclid")
    unlabelled = make_table(list(frame["name"]), X.astype(np.float32), frame[["name"]])
    with pytest.raises(DeltaAtlasError, match="needs a 'domain' label"):
        rank(X[0], unlabelled, compare="domain-lens")
    sims = similarities(X[0], table, "domain-lens")
    assert sims.shape == (len(X),) and np.all(np.abs(sims) <= 1 + 1e-9)
