"""The domain lens: a pool's vectors seen only along the directions that tell its domains apart.

Why it exists: a Delta Activation records everything a finetune changed at the probes' last token, and on small
bases much of that is the *answer form* (a letter, a label, prose, code). A hand-written task then lands next to
the model whose answers look like its own, whatever their subject (bench/README.md, "Domain over format").
When a pool labels its models' domains, those labels say which differences matter: linear discriminant analysis
(LDA) finds the few directions along which the domains differ most relative to how much models of one domain
differ among themselves, so a direction shared by the letter-answering models of law, medicine and commonsense
weighs little. Comparing a task with the pool by cosine in that space is the lens.

It is a named comparison beside the paper's method (plain cosine of the raw vectors), and task search's default
where a pool's labels allow one (core.reuse.task.default_compare, chosen by measurement): it needs domain labels,
it is fitted on the pool it ranks, and both figures are shown to the user (``search_quality.json``).

    lens = DomainLens().fit(pool_vectors, pool_domains)     # [n, d], [n]
    lens.transform(vectors)                                 # [m, d] -> [m, n_domains - 1]

Rows are L2-normalised before fitting and transforming (cosine geometry, as everywhere else). Mixture labels
(``math+coding``) are left out of the fit, since LDA needs one class per model; they are still transformed.
Pools have far fewer models than dimensions, so the covariance is shrunk instead of inverted as it is: by
Ledoit-Wolf's estimate (scikit-learn's ``shrinkage="auto"``) unless a pool chose its own on its development tasks
(``lens_shrinkage`` in its search.json; bench/choose_lens_shrinkage.py).
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from core.errors import DeltaAtlasError
from core.map.geometry import _check_matrix, normalize_rows

log = logging.getLogger(__name__)

MIN_PER_DOMAIN = 2        # models a domain needs to count in the fit
MIN_DOMAINS = 3           # with 2 domains LDA has one direction: every cosine would be +1 or -1


class DomainLens:
    """scikit-learn style: ``__init__`` stores, ``fit`` validates and returns self, ``transform`` maps rows."""

    def __init__(self, shrinkage: str | float = "auto"):
        self.shrinkage = shrinkage

    def fit(self, vectors, labels) -> DomainLens:
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        X = _unit_rows(vectors, "pool vectors")                              # [n, d]
        labels = np.asarray([str(v).strip() for v in labels], dtype=object)
        if len(labels) != len(X):
            raise DeltaAtlasError(f"The domain lens got {len(X)} vectors but {len(labels)} labels: give one domain "
                                  "per model.")
        single = np.array([bool(v) and "+" not in v and v.lower() != "nan" for v in labels])
        counts = Counter(labels[single])
        kept = {d for d, c in counts.items() if c >= MIN_PER_DOMAIN}
        if len(kept) < MIN_DOMAINS:
            raise DeltaAtlasError(
                f"The domain lens needs at least {MIN_DOMAINS} domains with {MIN_PER_DOMAIN}+ models each; this pool "
                f"has {dict(counts) or 'no domain labels'}: label more models' domains, or compare by the paper's "
                "method.")
        rows = single & np.isin(labels, sorted(kept))
        try:
            self.lda_ = LinearDiscriminantAnalysis(solver="eigen", shrinkage=self.shrinkage).fit(X[rows], labels[rows])
        except np.linalg.LinAlgError:
            # the within-domain scatter is singular even after shrinkage (vectors spanning very few directions, as
            # on tiny models): the SVD solver handles a rank-deficient scatter without inverting it
            log.info("Domain lens: singular scatter, fitted with the SVD solver instead.")
            self.lda_ = LinearDiscriminantAnalysis(solver="svd").fit(X[rows], labels[rows])
        self.domains_ = sorted(kept)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, vectors) -> np.ndarray:
        if not hasattr(self, "lda_"):
            raise DeltaAtlasError("DomainLens is not fitted: call fit(pool_vectors, domains) first.")
        X = _unit_rows(vectors, "vectors")
        if X.shape[1] != self.n_features_in_:
            raise DeltaAtlasError(f"The vectors have {X.shape[1]} dimensions but the lens was fitted on "
                                  f"{self.n_features_in_}: they come from another base.")
        return self.lda_.transform(X)                                        # [m, n_domains - 1]


def _unit_rows(vectors, what: str) -> np.ndarray:
    """Validated rows [n, d] (one vector [d] becomes [1, d]), at unit length."""
    X = np.asarray(vectors, dtype=np.float64)
    return normalize_rows(_check_matrix(X[None, :] if X.ndim == 1 else X, what))
