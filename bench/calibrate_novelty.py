"""Choose the "no close match" quantile (core/reuse/novelty.py) from eval_find results, without searching again.

Each eval_find row keeps the task's similarity to every pool model, so the rule can be replayed for any quantile.
Run it on the *calibration* results (held-out rows of the datasets plus the off-domain tasks made from pretrain/),
pick the quantile there, and only then look at the hand-written set (--check), which never chooses anything:

    .venv/bin/python bench/eval_find.py --tasks-per-dataset 1 --off-domain --out bench/out/calibration.json
    .venv/bin/python bench/calibrate_novelty.py bench/out/calibration.json
    .venv/bin/python bench/calibrate_novelty.py bench/out/calibration.json --check bench/out/eval_find_ood.json \
        --write-settings data/demo/novelty.json --write-summary data/demo/search_quality.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

from bench.eval_find import saved_gains as saved_gains_of
from core.engine.pool_vectors import pool_vectors
from core.pool.catalog import read_catalog
from core.pool.folder import DEMO_CATALOG, NOVELTY_FILE, beside
from core.pool.vectors import matrix
from core.reuse.fingerprints import load_fingerprints, task_signals
from core.reuse.novelty import COMBINE, CloseMatchRule, verdict
from core.reuse.references import load_references
from core.reuse.task import comparison_space, cosine_to, default_compare, lens_shrinkage

QUANTILES = (0.3, 0.4, 0.5, 0.6, 0.62, 0.64, 0.66, 0.68, 0.7, 0.8, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.95)
MARGINS = tuple(round(m, 3) for m in np.arange(-0.30, 0.101, 0.02))   # with reference tasks (novelty.py)
SIGNAL_SETS = (("raw", "compared"), ("raw", "lead"), ("compared", "lead"), ("raw", "compared", "lead"),
               # with the data side (core.reuse.fingerprints), where the rows and the pool have it
               ("like_data",), ("data_lead",), ("like_data", "data_lead"), ("raw", "like_data"),
               ("compared", "like_data"), ("lead", "like_data"), ("raw", "data_lead"), ("compared", "data_lead"),
               ("lead", "data_lead"), ("raw", "compared", "like_data"),
               ("raw", "compared", "lead", "like_data", "data_lead"))
STRENGTHS = (0.1, 1.0, 10.0)    # inverse L2 strength (scikit-learn's C) of the weighted rules' logistic models
MAX_IN_FLAGGED = 1          # the choice: the most off-domain flags with at most this many in-domain flags


def rows_of(paths: list[str]) -> list[dict]:
    """The rows of one or more eval_find outputs (each file's first step count)."""
    return [row for path in paths for row in next(iter(json.loads(Path(path).read_text()).values()))]


@dataclass
class Sims:
    """One task's similarities: raw to the pool [n]; as the search compares, to the pool [n] and the references [r];
    and its data-side signals (core.reuse.fingerprints) where the row and the pool have them."""
    raw: np.ndarray
    space: np.ndarray
    references: np.ndarray | None
    data: dict | None = None


def task_similarities(rows: list[dict], table: pd.DataFrame, references: pd.DataFrame | None,
                      shrinkage: str | float = "auto", fingerprints: tuple | None = None) -> list[Sims]:
    """Each task's similarities, replayed from its saved vector with the pool's default comparison (its space fitted
    once for every row, with the pool's lens ``shrinkage``); with the pool's ``fingerprints`` (load_fingerprints),
    the data side of every row that saved its examples' fingerprints."""
    vectors = matrix(table).astype(np.float64)
    space = comparison_space(table, default_compare(table), shrinkage)
    pool = space(vectors)                                                          # [n, k]
    refs = None if references is None else space(matrix(references).astype(np.float64))   # [r, k]
    out = []
    for row in rows:
        vector = np.asarray(row["vector"], dtype=np.float64)                       # [d]
        seen = space(vector[None, :])[0]                                           # [k]
        data = None
        if fingerprints is not None and row.get("fingerprints"):
            data = task_signals(np.asarray(row["fingerprints"], dtype=np.float32), *fingerprints)
        out.append(Sims(cosine_to(vector, vectors), cosine_to(seen, pool),
                        None if refs is None else cosine_to(seen, refs), data))
    return out


def any_helps(row: dict) -> bool | None:
    """Whether a measured model helps (core.reuse.fit.helps, example by example where the row counted them); None
    when nothing was measured."""
    gains = saved_gains_of(row)
    if gains is None or not gains["gain"].map(lambda g: g is not None and math.isfinite(g)).any():
        return None
    return bool(gains["helps"].any())


def flags(rows: list[dict], sims: list[Sims], rule: CloseMatchRule) -> tuple[int, int, int, int]:
    """(off-domain flagged, off-domain tasks, in-domain flagged, in-domain tasks) under ``rule`` and its combine."""
    return count_flags(rows, [verdict_of(rule, s, row) == "none" for row, s in zip(rows, sims)])


def verdict_of(rule: CloseMatchRule, sims: Sims, row: dict) -> str:
    return verdict(rule.is_close(sims.space, sims.references, raw=sims.raw, data=sims.data), saved_gains(any_helps(row)),
                   rule.combine)


def saved_gains(helps: bool | None) -> pd.DataFrame | None:
    """The loss side of a saved row as novelty.verdict reads it (None: nothing was measured)."""
    return None if helps is None else pd.DataFrame({"gain": [1.0 if helps else -1.0], "helps": [helps]})


# -- weighted rules: a logistic model of several signals, judged leave-one-out ------------------------------------
def weighted_candidates(rows: list[dict], sims: list[Sims], top: int) -> list[tuple[CloseMatchRule, tuple]]:
    """Every weighted rule tried, each with its leave-one-out counts on ``rows``: for each task, a logistic model
    fitted on the other tasks scores it; the threshold (folded into the bias) is then chosen on those held-out
    scores by the same criterion as every other rule, so the counts are not the model's own training fit. The rule
    returned is fitted on every task."""
    from sklearn.linear_model import LogisticRegression

    probe = CloseMatchRule(top=top)
    signals = [probe.signals(s.space, s.references, s.raw, s.data) for s in sims]
    fits = np.array([row["domain"] != "off" for row in rows])               # 1: the task fits (in-domain)
    out = []
    for names in SIGNAL_SETS:
        if any(name not in signal for signal in signals for name in names):
            continue                                                         # e.g. "lead" without references
        X = np.array([[signal[name] for name in names] for signal in signals])    # [tasks, signals]
        centre, scale = X.mean(0), X.std(0) + 1e-12
        Z = (X - centre) / scale
        for strength in STRENGTHS:
            held_out = np.array([LogisticRegression(C=strength).fit(np.delete(Z, i, 0), np.delete(fits, i))
                                 .decision_function(Z[i:i + 1])[0] for i in range(len(rows))])
            model = LogisticRegression(C=strength).fit(Z, fits)
            weights = model.coef_[0] / scale                                      # back to the signals' own units
            for combine in ("both", "vectors"):
                cut, counts = best_cut(held_out, rows, combine)
                bias = float(model.intercept_[0] - weights @ centre - cut)
                rule = CloseMatchRule(top=top, combine=combine, bias=bias,
                                      weights={n: float(w) for n, w in zip(names, weights)})
                out.append((rule, counts, f"weighted {'+'.join(names)}, C={strength}"))
    return out


def best_cut(scores: np.ndarray, rows: list[dict], combine: str) -> tuple[float, tuple]:
    """The score a task must reach to count as close, chosen by the module's criterion, and its counts."""
    helps = [any_helps(row) for row in rows]
    best = None
    for cut in np.unique(np.concatenate([scores, [np.inf]])):
        flagged = [verdict(bool(score >= cut), saved_gains(h), combine) == "none" for score, h in zip(scores, helps)]
        counts = count_flags(rows, flagged)
        if counts[2] <= MAX_IN_FLAGGED and (best is None or counts[0] > best[1][0] or
                                            (counts[0] == best[1][0] and counts[2] < best[1][2])):
            best = (float(cut), counts)
    return best if best is not None else (float(np.min(scores)), count_flags(rows, [False] * len(rows)))


def count_flags(rows: list[dict], flagged: list[bool]) -> tuple[int, int, int, int]:
    off = [f for f, row in zip(flagged, rows) if row["domain"] == "off"]
    inside = [f for f, row in zip(flagged, rows) if row["domain"] != "off"]
    return sum(off), len(off), sum(inside), len(inside)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calibration", nargs="+", help="eval_find outputs with in-domain and off-domain tasks")
    parser.add_argument("--check", default=None, help="eval_find output to report on (never used to choose)")
    parser.add_argument("--catalog", default=str(DEMO_CATALOG))
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--write-settings", default=None, metavar="FILE",
                        help="write the chosen quantile and combination (most off-domain flags with at most "
                             f"{MAX_IN_FLAGGED} in-domain flag on the calibration tasks) as the pool's novelty.json")
    parser.add_argument("--write-summary", default=None, metavar="FILE",
                        help="replay the chosen rule on both sets and write the How it works counts "
                             "(calibration -> held_out, --check -> ood)")
    args = parser.parse_args(argv)
    catalog = read_catalog(args.catalog)
    table = pool_vectors(catalog)[0]
    vectors = matrix(table)
    references = load_references(catalog.path, width=vectors.shape[1])
    calibration = rows_of(args.calibration)
    check = rows_of([args.check]) if args.check else None
    shrinkage = lens_shrinkage(catalog.path)
    fingerprints = load_fingerprints(catalog.path)
    cal_sims = task_similarities(calibration, table, references, shrinkage, fingerprints)
    check_sims = task_similarities(check, table, references, shrinkage, fingerprints) if check else None
    print("| combine | vectors' side | calibration: off-domain flagged | calibration: in-domain flagged wrongly |"
          + (" check: off-domain flagged | check: in-domain flagged wrongly |" if check else ""))
    print("|---|---|---|---|" + ("---|---|" if check else ""))
    best, fallback = None, None
    plain = [(rule, None, None) for rule in candidate_rules(args.top, references is not None)]
    for rule, held_out, name in plain + weighted_candidates(calibration, cal_sims, args.top):
        rule.fit(vectors)
        name = name or side(rule)
        a, n_off, b, n_in = held_out or flags(calibration, cal_sims, rule)   # a weighted rule: leave-one-out counts
        if b <= MAX_IN_FLAGGED and (best is None or a > best[1] or (a == best[1] and b < best[2])):
            best = (rule, a, b, name)
        if (rule.margin is None and rule.weights is None and b <= MAX_IN_FLAGGED and
                (fallback is None or a > fallback[1] or (a == fallback[1] and b < fallback[2]))):
            fallback = (rule, a, b)     # the pool's own background: what a rule falls back to without its inputs
        line = f"| {rule.combine} | {name} | {a}/{n_off} | {b}/{n_in} |"
        if check:
            c, m_off, d, m_in = flags(check, check_sims, rule)
            line += f" {c}/{m_off} | {d}/{m_in} |"
        print(line)
    if best is not None:
        print(f"chosen on the calibration tasks: combine {best[0].combine}, {best[3]} ({best[1]} off-domain "
              f"flagged, {best[2]} in-domain flagged)")
    if args.write_settings and best is not None:
        rule = best[0]
        quantile = fallback[0].quantile if fallback is not None and rule.weights is not None else rule.quantile
        Path(args.write_settings).write_text(json.dumps({
            "quantile": quantile, "top": rule.top, "combine": rule.combine,
            **({"margin": rule.margin} if rule.margin is not None else {}),
            **({"weights": rule.weights, "bias": rule.bias} if rule.weights is not None else {}),
            "chosen_on": f"{', '.join(Path(p).name for p in args.calibration)}: the most off-domain flags with at "
                         f"most {MAX_IN_FLAGGED} in-domain flag, by bench/calibrate_novelty.py ({best[3]}; the "
                         "quantile is the fallback where the rule's inputs are missing)"}, indent=1))
        print(f"-> {args.write_settings}")
    if args.write_summary:
        write_summary(Path(args.write_summary), table, references, calibration, check,
                      Path(args.write_settings) if args.write_settings else beside(catalog.path, NOVELTY_FILE),
                      shrinkage, fingerprints)
    return 0


def candidate_rules(top: int, with_references: bool) -> list[CloseMatchRule]:
    """Every rule tried: each combination with each quantile of the pool's own pairs, and (where the pool keeps
    reference tasks) with each margin over the closest reference task."""
    rules = []
    for combine in COMBINE:
        quantiles = QUANTILES if combine != "help" else QUANTILES[:1]
        rules += [CloseMatchRule(quantile=q, top=top, combine=combine) for q in quantiles]
        if with_references and combine != "help":
            rules += [CloseMatchRule(top=top, combine=combine, margin=m) for m in MARGINS]
    return rules


def side(rule: CloseMatchRule) -> str:
    if rule.margin is not None:
        return f"lead over the closest reference task >= {rule.margin:+.2f}"
    return f"pool quantile {rule.quantile:.2f} (similarity {rule.threshold_:.3f})"


def write_summary(path: Path, table: pd.DataFrame, references: pd.DataFrame | None, calibration: list[dict],
                  check: list[dict] | None, settings: Path | None = None, shrinkage: str | float = "auto",
                  fingerprints: tuple | None = None) -> None:
    """eval_find's counts with the verdicts of the pool's rule (the runs may have used another quantile).

    Only the keys this tool owns are replaced; the rest of the summary (e.g. ``loss_on``) stays as it was."""
    from bench.eval_find import summary
    from core.reuse.novelty import load_rule

    rule = load_rule(settings if settings and settings.is_file() else None).fit(matrix(table))
    out = json.loads(path.read_text()) if path.is_file() else {}  # keep the keys other tools wrote (loss_on, lens)
    for key in ("held_out", "off", "ood"):
        out.pop(key, None)
    for key, rows in (("held_out", calibration), ("ood", check)):
        if not rows:
            continue
        for row, sims in zip(rows, task_similarities(rows, table, references, shrinkage, fingerprints)):
            row["no_close_match"] = verdict_of(rule, sims, row) == "none"
        counts = summary(rows)
        if "in" in counts:
            out[key] = counts["in"]
        if "off" in counts and (key == "ood" or "off" not in out):
            out["off"] = counts["off"]
    out["rule"] = {"quantile": rule.quantile, "top": rule.top, "combine": rule.combine,
                   "threshold": round(rule.threshold_, 4), "margin": rule.margin, "weights": rule.weights,
                   "reference_tasks": 0 if references is None else len(references)}
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
