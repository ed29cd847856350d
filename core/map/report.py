"""The evidence for a pool: do Delta Activations group models by what they learned, better than the paper's
baselines? Are they additive, and robust to the finetuning settings?

Measured on a catalog and its vector file (SPEC §2):
- clustering: silhouette of the ``domain`` labels on cosine distance, and leave-one-out nearest-neighbour accuracy,
  for Delta Activations and each baseline, over the primary models (variant == primary) and over the whole pool
  (mixture models left out: their domain label names two domains);
- additivity: for each mixture of A and B, cos(v(A∪B), v(A) + v(B)) beside its cosine to every other model;
- robustness: for each robustness / full-finetune variant, whether its nearest neighbour shares its domain / dataset.
``build_report`` returns plain JSON; ``format_report`` turns it into tables; ``python -m core report`` prints them.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DeltaAtlasError
from core.map.geometry import cosine_similarities
from core.pool.catalog import read_catalog
from core.pool.folder import DEMO_CATALOG, vectors_target
from core.pool.vectors import matrix, read_vectors
from core.progress import ProgressFn, TextBar

log = logging.getLogger(__name__)

EMBEDDINGS = {  # key -> name in the paper's table (SPEC §2), in the table's order
    "weights": "flattened adapter weights", "mask": "salient mask", "outputs": "output embedding",
    "delta_activations": "Delta Activations"}
PAPER_SILHOUETTE = {"weights": -0.043, "mask": 0.190, "outputs": 0.087, "delta_activations": 0.614}  # 3-base average
SCOPES = {"primary": "the primary models (one dataset per domain, three data splits each)",
          "all": "every model except the mixtures (whose domain label names two domains)"}
ROBUST_VARIANTS = ("robustness", "full")


# ---------------------------------------------------------------------------------------------- measures
def silhouette(S: np.ndarray, labels: list[str]) -> float | None:
    """Silhouette of ``labels`` on the cosine distance 1 - S; None when undefined (< 2 labels, all singletons)."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels, dtype=object)
    n_labels = len(set(labels.tolist()))
    if not 2 <= n_labels < len(labels):
        return None
    D = np.maximum(1.0 - S, 0.0)
    np.fill_diagonal(D, 0.0)
    return float(silhouette_score(D, labels, metric="precomputed"))


def nearest_other(S: np.ndarray) -> np.ndarray:
    """Index of each row's most similar other row."""
    S = np.array(S, dtype=np.float64)
    np.fill_diagonal(S, -np.inf)
    return np.argmax(S, axis=1)


def loo_accuracy(S: np.ndarray, labels: list[str]) -> float | None:
    """Share of models whose nearest other model has the same label (leave-one-out 1-NN); None below 2 models."""
    if len(labels) < 2:
        return None
    nearest = nearest_other(S)
    return float(np.mean([labels[i] == labels[j] for i, j in enumerate(nearest)]))


def additivity(X: np.ndarray, names: list[str], mixtures: dict[str, tuple[str, str]]) -> list[dict]:
    """For each mixture: cosine of its vector with v(A) + v(B), with A and B, and with every other model."""
    index = {n: i for i, n in enumerate(names)}
    S = cosine_similarities(X)
    rows = []
    for mix, (a, b) in mixtures.items():
        m = index[mix]
        summed = float(cosine_similarities(X[m][None], (X[index[a]] + X[index[b]])[None])[0, 0])
        others = np.delete(np.arange(len(names)), m)
        best = others[np.argmax(S[m, others])]
        rows.append({"name": mix, "parts": [a, b], "cos_sum": summed, "cos_a": float(S[m, index[a]]),
                     "cos_b": float(S[m, index[b]]), "mean_cos_others": float(S[m, others].mean()),
                     "max_cos_others": float(S[m, best]), "closest_other": names[best],
                     "rank_of_sum": int(1 + np.sum(S[m, others] > summed)), "n_compared": int(len(others) + 1)})
    return rows


def robustness(S: np.ndarray, frame: pd.DataFrame, label: str) -> list[dict]:
    """For each robustness / full variant: its nearest other model, and whether it shares domain and dataset."""
    nearest = nearest_other(S)
    records = frame.to_dict("records")
    rows = []
    for i, (row, j) in enumerate(zip(records, nearest)):
        if row.get("variant", "") not in ROBUST_VARIANTS:
            continue
        other = records[int(j)]
        rows.append({"name": row["name"], "variant": row["variant"], "setting": row.get("setting", ""),
                     label: row[label], "nearest": other["name"], "nearest_cos": float(S[i, j]),
                     "same_" + label: bool(other[label] == row[label]),
                     "same_dataset": bool(other["dataset"] == row["dataset"]) if "dataset" in row else None})
    return rows


# ---------------------------------------------------------------------------------------------- the report
def build_report(catalog_path, vectors_path=None, *, baselines: bool = True, label: str = "domain",
                 progress: ProgressFn | None = None, device: str | None = None) -> dict:
    """Every measure of the module docstring, as plain JSON (None where a measure is undefined)."""
    catalog = read_catalog(catalog_path)
    vectors_path = Path(vectors_path) if vectors_path else vectors_target(catalog.path)
    if label not in catalog.label_columns:
        raise DeltaAtlasError(f"Catalog {catalog.path} has no {label!r} column to judge the clustering by: "
                              f"choose one of {', '.join(catalog.label_columns) or '(no label columns)'}.")
    table = catalog.align(read_vectors(vectors_path), vectors_path)
    frame = catalog.labels_frame().fillna("")
    have = set(table["name"].astype(str))
    missing = [n for n in frame["name"] if n not in have]
    frame = frame[frame["name"].isin(have)].reset_index(drop=True)
    if len(frame) < 2:
        raise DeltaAtlasError(f"Only {len(frame)} model(s) of {catalog.path} have vectors in {vectors_path}: "
                              "embed the pool first (`python -m core embed`).")
    X = matrix(table.set_index(table["name"].astype(str)).loc[frame["name"]].reset_index(drop=True))
    variant = frame["variant"] if "variant" in frame.columns else pd.Series([""] * len(frame))
    scopes = {"primary": frame.index[variant == "primary"].tolist(),
              "all": frame.index[variant != "mixture"].tolist()}
    notes = [f"{len(missing)} model(s) of the catalog have no vector and are left out: {', '.join(missing[:5])}"
             + (" ..." if len(missing) > 5 else "")] if missing else []
    if "variant" not in frame.columns:
        notes.append("The catalog has no 'variant' column: there is no primary subset, and no mixture or robustness "
                     "variant to examine.")
    similarities = {"delta_activations": (cosine_similarities(X), X.shape[1], "Delta Activations, cosine", None)}
    if baselines:
        similarities.update(_baselines(catalog, frame, scopes["all"], notes, progress, device))
    embeddings = [_judge(key, similarities[key], frame, scopes, label) for key in EMBEDDINGS if key in similarities]
    S = similarities["delta_activations"][0]
    return {
        "catalog": str(catalog.path), "vectors": str(vectors_path), "label": label, "n_models": len(frame),
        "scopes": {k: {"n": len(v), "about": SCOPES[k], "names": frame["name"][v].tolist()} for k, v in scopes.items()},
        "embeddings": embeddings,
        "paper_silhouette": {EMBEDDINGS[k]: v for k, v in PAPER_SILHOUETTE.items()},
        "additivity": additivity(X, frame["name"].tolist(), _mixtures(frame, notes)),
        "robustness": robustness(S[np.ix_(scopes["all"], scopes["all"])], frame.iloc[scopes["all"]], label)
        if "variant" in frame.columns else [],
        "notes": notes,
    }


def _baselines(catalog, frame: pd.DataFrame, rows: list[int], notes: list[str], progress, device) -> dict:
    """The baselines' similarity matrices over ``rows`` of ``frame``; a baseline that cannot run becomes a note."""
    from core.map.baselines import compute_baselines

    names = frame["name"][rows].tolist()
    if len(names) < 2:
        return {}
    out = {}
    for which in (("weights", "mask"), ("outputs",)):
        try:
            result = compute_baselines(catalog, names, which=which, device=device, progress=progress)
        except DeltaAtlasError as exc:
            notes.append(f"Baseline(s) {' and '.join(EMBEDDINGS[w] for w in which)} could not be computed: {exc}")
            continue
        for key, sim in result.items():
            out[key] = (sim.matrix, sim.dim, sim.about, rows)
    return out


def _judge(key: str, similarity: tuple, frame: pd.DataFrame, scopes: dict, label: str) -> dict:
    """Silhouette and 1-NN accuracy of one embedding in each scope (and its robustness share)."""
    S, dim, about, rows = similarity
    rows = rows if rows is not None else list(range(len(frame)))
    position = {r: i for i, r in enumerate(rows)}
    result = {"key": key, "name": EMBEDDINGS[key], "dim": int(dim), "about": about, "silhouette": {},
              "loo_accuracy": {}}
    for scope, members in scopes.items():
        inside = [position[m] for m in members if m in position]
        sub = S[np.ix_(inside, inside)]
        labels = frame[label].iloc[[rows[i] for i in inside]].astype(str).tolist()
        result["silhouette"][scope] = silhouette(sub, labels) if len(inside) > 2 else None
        result["loo_accuracy"][scope] = loo_accuracy(sub, labels)
    inside = [position[m] for m in scopes["all"] if m in position]
    robust = robustness(S[np.ix_(inside, inside)], frame.iloc[[rows[i] for i in inside]], label) \
        if "variant" in frame.columns else []
    result["robust_same_" + label] = float(np.mean([r["same_" + label] for r in robust])) if robust else None
    return result


def _mixtures(frame: pd.DataFrame, notes: list[str]) -> dict[str, tuple[str, str]]:
    """Mixture name -> its two single-dataset models, from ``mixture_of`` ("A+B"; names may hold '+' too)."""
    if "mixture_of" not in frame.columns:
        return {}
    known, found = set(frame["name"]), {}
    for row in frame.to_dict("records"):
        text = str(row["mixture_of"] or "")
        if not text:
            continue
        splits = [(text[:i], text[i + 1:]) for i, c in enumerate(text) if c == "+"]
        parts = next(((a, b) for a, b in splits if a in known and b in known), None)
        if parts is None:
            notes.append(f"Mixture {row['name']}: its parts {text!r} are not both models with vectors; left out of "
                         "the additivity check.")
        else:
            found[row["name"]] = parts
    return found


# ---------------------------------------------------------------------------------------------- text
def _num(value, fmt: str = "+.3f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def format_report(report: dict) -> str:
    """The report as tables a person can read."""
    label, scopes = report["label"], report["scopes"]
    n_p, n_a = scopes["primary"]["n"], scopes["all"]["n"]
    lines = [f"Delta Atlas report: {report['n_models']} models ({report['catalog']})", "",
             f"How well each embedding groups the models by {label} (silhouette on cosine distance: 1 = perfect "
             "groups, 0 = mixed;", f"nearest neighbour = share of models whose most similar model has the same {label})",
             "", f"{'embedding':<27}{'dim':>11}  {'silhouette':^25}  {'nearest neighbour':^25}  {'paper':>6}",
             f"{'':<27}{'':>11}  {f'primary ({n_p})':>12} {f'all ({n_a})':>12}  {'primary':>12} {'all':>12}"]
    for e in report["embeddings"]:
        paper = report["paper_silhouette"].get(e["name"])
        lines.append(f"{e['name']:<27}{e['dim']:>11,}  {_num(e['silhouette']['primary']):>12} "
                     f"{_num(e['silhouette']['all']):>12}  {_num(e['loo_accuracy']['primary'], '.0%'):>12} "
                     f"{_num(e['loo_accuracy']['all'], '.0%'):>12}  {_num(paper):>6}")
    lines.append("(paper: average silhouette over three 7-9B base models, 15 LoRA models each)")
    if report["additivity"]:
        lines += ["", "Additivity: is the model trained on A and B together close to v(A) + v(B)?",
                  f"{'mixture':<30}{'cos(v, vA+vB)':>14}{'cos vA':>8}{'cos vB':>8}{'mean others':>12}"
                  f"{'max others':>11}{'rank of sum':>12}"]
        for a in report["additivity"]:
            lines.append(f"{a['name']:<30}{_num(a['cos_sum']):>14}{_num(a['cos_a']):>8}{_num(a['cos_b']):>8}"
                         f"{_num(a['mean_cos_others']):>12}{_num(a['max_cos_others']):>11}"
                         f"{a['rank_of_sum']:>6} of {a['n_compared']}")
    if report["robustness"]:
        lines += ["", f"Robustness: does a model trained with other settings still sit next to its own {label}?",
                  f"{'model':<30}{'setting':<28}{'nearest model':<30}{'cos':>6}  same {label} / dataset"]
        for r in report["robustness"]:
            same = f"{'yes' if r['same_' + label] else 'NO'} / " + \
                   ("n/a" if r["same_dataset"] is None else "yes" if r["same_dataset"] else "no")
            lines.append(f"{r['name']:<30}{str(r['setting'])[:27]:<28}{r['nearest']:<30}{_num(r['nearest_cos']):>6}  {same}")
        shares = [f"{e['name']} {e['robust_same_' + label]:.0%}" for e in report["embeddings"]
                  if e.get("robust_same_" + label) is not None]
        lines.append(f"Nearest neighbour in the same {label}: " + ", ".join(shares))
    if report["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", default=str(DEMO_CATALOG), help="catalog CSV (default: the demo zoo's)")
    parser.add_argument("--vectors", default=None, help="vector file (default: vectors.parquet beside the catalog)")
    parser.add_argument("--label", default="domain", help="label column the clustering is judged by (default domain)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the baselines (they read every model's "
                        "weights and generate text with every model)")
    parser.add_argument("--device", default=None, help="device for the output baseline (auto, cpu, cuda, mps)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def main(args: argparse.Namespace) -> int:
    report = build_report(args.catalog, args.vectors, baselines=not args.no_baselines, label=args.label,
                          progress=None if args.json else TextBar(), device=args.device)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0
