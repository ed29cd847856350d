""""No close match": does a task fit any model of the pool, or only less badly than others?

Every ranking has a first place, even for a task unlike anything in the pool (a poem against a pool of math and
law adapters). Every finetune moves the probes' last-token state a little in a shared direction (the instruction
format, the end-of-answer habit), so even an unrelated task has a positive similarity to every model; what tells
a real match is how far its closest models stand above that shared background.

The rule is calibrated on the pool itself, not on a fixed number: ``fit`` reads the pool's pairwise similarities
and takes their ``quantile`` as the threshold; a task whose match strength (the mean similarity of its ``top``
closest models) falls below it is flagged. The threshold moves with the pool's own spread, but the quantile
does not carry over between pools as well as hoped (bench/README.md): a pool may ship its own (``novelty.json``
beside its catalog, see ``load_rule``). Quantiles are chosen on calibration tasks cut from the datasets (in-domain)
and from general text (off-domain), never on the hand-written evaluation tasks.

A pool may also keep *reference tasks* beside its catalog (core.reuse.references: everyday tasks that fit none of
its models, trained with the pool's own task recipe). Where it does and its ``novelty.json`` sets a ``margin``,
the vectors' side reads: the task's closest models must stand at least ``margin`` above its closest reference task,
compared as the search compares (through the lens where the search uses one). A few-shot task adapter shares much
with any other few-shot task adapter, so the reference tasks are the fair background for a user's task; the pool's
own pairs are not (bench/README.md, "Answers you can trust").

A pool may instead weigh several signals at once (``weights`` and ``bias`` in its ``novelty.json``, SIGNALS): a
logistic model fitted by bench/calibrate_novelty.py on the pool's development tasks only, whose score is at least 0
for a task that fits. Where the pool keeps no reference tasks (or they cannot be read), a rule that needs them
falls back to the pool's own background, and says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DeltaAtlasError
from core.map.geometry import cosine_similarities
from core.pool.folder import read_settings_file

QUANTILE = 0.85           # chosen on the calibration tasks: the most off-domain flags with <= 1 in-domain flag
TOP = 3
SIGNALS = {               # what a weighted rule may read; each from the mean similarity of the task's TOP closest models
    "raw": "similarity by the paper's cosine",
    "compared": "similarity as the search compared (through the lens where it uses one)",
    "lead": "how far the compared similarity stands above the closest everyday reference task",
    # the data side (core.reuse.fingerprints): the task's examples read by the base, against the pool's training data
    "like_data": "how like the pool's training examples the task's examples read, to the base",
    "data_lead": "how much more like the pool's training examples than like the everyday tasks' examples",
}
DATA_SIGNALS = ("like_data", "data_lead")


@dataclass
class CloseMatchRule:
    """``CloseMatchRule().fit(pool_vectors).is_close(similarities)``; plain arrays in, plain values out."""

    quantile: float = QUANTILE
    top: int = TOP
    combine: str = "both"     # with the measured loss: when a task is "nothing fits" (COMBINE)
    margin: float | None = None   # with reference tasks: how far the closest models must lead the closest reference
    weights: dict[str, float] | None = None   # a weighted rule: SIGNALS name -> weight (close: score >= 0)
    bias: float = 0.0

    def fit(self, vectors: np.ndarray) -> "CloseMatchRule":
        """Learn the pool's background similarity from its vectors [n, d]."""
        vectors = np.asarray(vectors, dtype=np.float64)
        if vectors.ndim != 2 or len(vectors) < 3:
            raise DeltaAtlasError(f"Calibrating 'no close match' needs at least 3 pool vectors, got {len(vectors)}.")
        if not 0.0 < self.quantile < 1.0 or self.top < 1:
            raise DeltaAtlasError(f"CloseMatchRule(quantile={self.quantile}, top={self.top}): the quantile must lie "
                                  "strictly between 0 and 1 and top must be at least 1.")
        if self.margin is not None and not np.isfinite(self.margin):
            raise DeltaAtlasError(f"CloseMatchRule(margin={self.margin}): give a finite number (or none).")
        if self.weights is not None:
            unknown = set(self.weights) - set(SIGNALS)
            numbers = [*self.weights.values(), self.bias]
            if not self.weights or unknown or not all(np.isfinite(v) for v in numbers):
                raise DeltaAtlasError(f"CloseMatchRule(weights={self.weights}, bias={self.bias}): give a finite weight "
                                      f"for one or more of {', '.join(SIGNALS)}, and a finite bias.")
        sims = cosine_similarities(vectors, vectors)                   # [n, n]
        pairs = sims[np.triu_indices(len(vectors), k=1)]               # [n (n - 1) / 2]
        self.threshold_ = float(np.quantile(pairs, self.quantile))
        self.n_models_ = len(vectors)
        return self

    def strength(self, similarities: np.ndarray) -> float:
        """How well the task fits its closest models: the mean of its ``top`` best similarities."""
        sims = np.sort(np.asarray(similarities, dtype=np.float64))[::-1]
        return float(sims[: min(self.top, len(sims))].mean()) if len(sims) else float("nan")

    def reads_references(self) -> bool:
        """Whether the rule compares the task with the pool's reference tasks (when it has them)."""
        return self.margin is not None or "lead" in (self.weights or {})

    def uses_references(self, references: np.ndarray | None) -> bool:
        return self.reads_references() and references is not None and len(references) > 0

    def reads_data(self) -> bool:
        """Whether the rule weighs the data side (core.reuse.fingerprints), where the pool keeps fingerprints."""
        return any(name in DATA_SIGNALS for name in self.weights or {})

    def weighs(self, references: np.ndarray | None, data: dict[str, float] | None = None) -> bool:
        """Whether the weighted rule applies: it has weights and every signal they read is at hand (the lead needs
        references, the data side the task's ``data`` signals)."""
        if self.weights is None:
            return False
        have = {"raw", "compared", *(data or {})} | ({"lead"} if self.uses_references(references) else set())
        return set(self.weights) <= have

    def reads_background(self, references: np.ndarray | None, data: dict[str, float] | None = None) -> bool:
        """Whether the pool's own background decides (the quantile rule, or the fallback of a rule whose references
        or data side are missing): it reads the raw similarities."""
        return not self.weighs(references, data) and not (self.margin is not None and self.uses_references(references))

    def lead(self, similarities: np.ndarray, references: np.ndarray) -> float:
        """How far the task's closest models stand above its closest reference task."""
        return self.strength(similarities) - float(np.max(references))

    def signals(self, similarities: np.ndarray, references: np.ndarray | None = None,
                raw: np.ndarray | None = None, data: dict[str, float] | None = None) -> dict[str, float]:
        """Every signal of SIGNALS that the inputs allow: ``similarities`` [n] as the search compared, the
        reference tasks' [r] seen the same way, ``raw`` [n] by the paper's cosine (default: ``similarities``),
        ``data``: the task's data-side signals (core.reuse.fingerprints.task_signals), where the pool has them."""
        out = {"raw": self.strength(similarities if raw is None else raw), "compared": self.strength(similarities)}
        if references is not None and len(references):
            out["lead"] = self.lead(similarities, references)
        out.update({name: float(value) for name, value in (data or {}).items() if name in DATA_SIGNALS})
        return out

    def score(self, signals: dict[str, float]) -> float:
        """The weighted rule's score: at least 0 for a task that fits."""
        return self.bias + sum(weight * signals[name] for name, weight in (self.weights or {}).items())

    def is_close(self, similarities: np.ndarray, references: np.ndarray | None = None,
                 raw: np.ndarray | None = None, data: dict[str, float] | None = None) -> bool:
        """Close by the vectors. ``similarities`` [n]: the task's to the pool as the search compared; ``references``
        [r]: to the reference tasks, the same way; ``raw`` [n]: by the paper's cosine (default: ``similarities``).
        A weighted rule scores the signals; a margin holds the task against its closest reference task; otherwise
        (and where the references or data side a rule needs are missing) the raw strength is held against the
        pool's own background (``fit``)."""
        if self.weighs(references, data):
            return bool(self.score(self.signals(similarities, references, raw, data)) >= 0.0)
        if not self.reads_background(references):
            return bool(self.lead(similarities, references) >= self.margin)
        if not hasattr(self, "threshold_"):
            raise DeltaAtlasError("CloseMatchRule is not fitted: call fit(pool_vectors) first.")
        return bool(self.strength(similarities if raw is None else raw) >= self.threshold_)

    def explain(self, similarities: np.ndarray, references: np.ndarray | None = None,
                reference_names: list[str] | None = None, raw: np.ndarray | None = None,
                data: dict[str, float] | None = None) -> str:
        """One sentence on the vectors' side of the verdict, with its numbers."""
        if self.weighs(references, data):
            return self._explain_weighted(similarities, references, reference_names, raw, data)
        if self.reads_background(references):
            similarities = similarities if raw is None else raw
        strength = self.strength(similarities)
        if not self.reads_background(references):
            best = int(np.argmax(references))
            name = f"'{reference_names[best]}'" if reference_names else "one"
            lead = self.lead(similarities, references)
            side = "Close" if lead >= self.margin else "Not close"
            return (f"{side} by the vectors: the task's {self.top} closest models have similarity {strength:.2f}, "
                    f"{abs(lead):.2f} {'above' if lead >= 0 else 'below'} its closest everyday reference task "
                    f"({name}, {float(references[best]):.2f}); a match needs a lead of at least {self.margin:+.2f}.")
        if self.is_close(similarities):
            return (f"Close by the vectors: the task's {self.top} closest models have similarity {strength:.2f}, above "
                    f"the {self.threshold_:.2f} that {100 * self.quantile:.0f}% of this pool's model pairs stay under.")
        return (f"Not close by the vectors: the task's {self.top} closest models have similarity {strength:.2f}, less "
                f"than {100 * self.quantile:.0f}% of this pool's own model pairs share with each other "
                f"({self.threshold_:.2f}).")

    def _explain_weighted(self, similarities, references, reference_names, raw, data) -> str:
        signals = self.signals(similarities, references, raw, data)
        side = "Close" if self.score(signals) >= 0 else "Not close"
        text = (f"{side} by this pool's calibrated rule: the task's {self.top} closest models have similarity "
                f"{signals['raw']:.2f} by the paper's measure and {signals['compared']:.2f} as the search compares")
        if "like_data" in signals:
            text += (f"; read by the base model, your examples resemble the pool's training examples at "
                     f"{signals['like_data']:.2f} (cosine)")
        if "data_lead" in signals:
            text += f", {signals['data_lead']:+.2f} against the everyday tasks' examples"
        if "lead" in signals:
            best = int(np.argmax(references))
            name = f" ('{reference_names[best]}')" if reference_names else ""
            text += (f", {abs(signals['lead']):.2f} {'above' if signals['lead'] >= 0 else 'below'} its closest "
                     f"everyday reference task{name}")
        return text + f"; weighed together they score {self.score(signals):+.2f} (a match needs 0 or more)."


def load_rule(path: Path | None) -> CloseMatchRule:
    """The rule with the settings chosen for a pool (``novelty.json`` beside its catalog: quantile, top, combine,
    margin, weights, bias), else the defaults. bench/calibrate_novelty.py --write-settings writes that file from the pool's calibration tasks."""
    data = None if path is None else read_settings_file(path)
    if data is None:
        return CloseMatchRule()
    try:
        margin, weights = data.get("margin"), data.get("weights")
        return CloseMatchRule(quantile=float(data.get("quantile", QUANTILE)), top=int(data.get("top", TOP)),
                              combine=str(data.get("combine", "both")),
                              margin=None if margin is None else float(margin),
                              weights=None if weights is None else {str(k): float(v) for k, v in weights.items()},
                              bias=float(data.get("bias", 0.0)))
    except (ValueError, TypeError, AttributeError) as exc:
        raise DeltaAtlasError(f"{path} cannot be read ({exc}): fix it or delete it to use the default settings.") from None


# -- the verdict a person reads: both measurements together ------------------------------------------------------
VERDICTS = {"strong": "Strong match", "weak": "Weak match", "none": "Nothing in this pool fits your task"}
COMBINE = {  # when is a task flagged "nothing fits", from (close by the vectors, some measured model helps)
    "both": lambda close, helps: not close and not helps,     # both measurements say no
    "either": lambda close, helps: not close or not helps,    # either says no
    "vectors": lambda close, helps: not close,                # the vectors alone (the rule before the loss check)
    "help": lambda close, helps: not helps,                   # the measured loss alone
}


def verdict(close: bool, gains: pd.DataFrame | None, combine: str = "both") -> str:
    """"strong", "weak" or "none", from the vectors' closeness (``CloseMatchRule.is_close``) and the measured loss of
    the closest models on the task's examples (``core.reuse.fit.measure_gains``; None when not measured); ``combine``
    (a name of COMBINE, chosen per pool in novelty.json) says when the task is flagged "none"."""
    if combine not in COMBINE:
        raise DeltaAtlasError(f"Unknown combine {combine!r} in the pool's novelty settings: use {', '.join(COMBINE)}.")
    measured = gains is not None and bool(gains["gain"].notna().any())
    if not measured:
        return "strong" if close else "none"
    helps = bool(gains["helps"].any())
    if COMBINE[combine](close, helps):
        return "none"
    return "strong" if close and helps else "weak"


def verdict_words(kind: str, close: bool, group: str | None, gains: pd.DataFrame | None,
                  reference: str = "", unlike_data: bool = False) -> str:
    """The verdict in plain words, for the page and the command line; ``reference``: the everyday reference task
    the examples sit closest to, where the pool keeps them; ``unlike_data``: the data side found the examples unlike
    the pool's training examples."""
    measured = gains[gains["gain"].notna()] if gains is not None else gains
    n = 0 if measured is None else len(measured)
    helping = 0 if measured is None else int(measured["helps"].sum())
    best = float(measured["gain"].max()) if n else 0.0
    where = f"the {group} models" if group else "some of the models"
    if close:
        sits = f"your task sits with {where}"
    elif unlike_data:
        sits = "your examples read unlike what this pool's models were trained on"
    elif reference:
        sits = (f"your examples look more like everyday tasks (such as '{reference.replace('-', ' ')}') than like "
                "any model here")
    else:
        sits = "no model changed the base much the way your examples do"
    if not n:
        helped = ""
    elif helping:
        helped = (f"{helping} of the {n} closest {'lowers' if helping == 1 else 'lower'} the error on your examples "
                  f"(the best by {100 * best:.0f}%)")
    else:
        helped = f"none of the {n} closest answers your examples better than the base model does"
    joined = sits + ((", and " if close == bool(helping) else ", but ") + helped if helped else "")
    if kind == "none":
        return f"{VERDICTS['none']}: {joined}. The closest models are only the least bad."
    return f"{VERDICTS[kind]}: {joined}."
