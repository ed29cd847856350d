"""The report on a synthetic pool whose structure is known (the demo zoo's label columns, vectors built by hand),
on the tiny pool with every baseline, and through the command line."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.cli import main
from core.errors import DeltaAtlasError
from core.map.report import build_report, format_report, loo_accuracy, silhouette
from core.pool.vectors import make_table, write_vectors
from tests.conftest import write_catalog

DOMAINS = {"legal": "legalbench", "math": "gsm8k", "medical": "pubmedqa", "commonsense": "hellaswag", "coding": "mbpp"}


def zoo_rows() -> list[dict]:
    """Catalog rows shaped like the demo zoo's: 15 primary, robustness and full variants, two mixtures."""
    def row(name, domain, dataset, variant, setting, method="lora", split="", mixture_of=""):
        return {"name": name, "source": f"./models/{name}", "kind": "full" if method == "full" else "lora",
                "base": "./base", "domain": domain, "dataset": dataset, "method": method, "variant": variant,
                "setting": setting, "mixture_of": mixture_of, "split": split, "rank": "8", "learning_rate": "0.001",
                "steps": "100", "examples": "300"}

    rows = [row(f"{d}-{k}-{s}", d, k, "primary", f"split {i + 1} of 3", split=s)
            for d, k in DOMAINS.items() for i, s in enumerate(("first", "second", "third"))]
    rows += [row(f"{d}-{DOMAINS[d]}-{v}", d, DOMAINS[d], "robustness", v) for d in ("math", "medical")
             for v in ("lr-low", "rank-16")]
    rows += [row(f"{d}-{DOMAINS[d]}-full", d, DOMAINS[d], "full", "full-parameter finetune", method="full")
             for d in ("math", "medical")]
    rows += [row("mix-gsm8k+mbpp", "math+coding", "gsm8k+mbpp", "mixture", "union of two datasets",
                 mixture_of="math-gsm8k-first+coding-mbpp-first"),
             row("mix-legalbench+pubmedqa", "legal+medical", "legalbench+pubmedqa", "mixture", "union",
                 mixture_of="legal-legalbench-first+medical-pubmedqa-first")]
    return rows


def zoo_vectors(rows: list[dict], dim: int = 48, seed: int = 0) -> np.ndarray:
    """One random direction per domain plus a little noise; a mixture's vector is exactly v(A) + v(B)."""
    rng = np.random.default_rng(seed)
    centres = {d: rng.normal(size=dim) for d in DOMAINS}
    by_name = {}
    for r in rows:
        if r["variant"] != "mixture":
            by_name[r["name"]] = centres[r["domain"]] * rng.uniform(0.5, 2) + 0.15 * rng.normal(size=dim)
    for r in rows:
        if r["variant"] == "mixture":
            a, b = r["mixture_of"].split("+")
            by_name[r["name"]] = by_name[a] + by_name[b]
    return np.stack([by_name[r["name"]] for r in rows])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report_zoo")
    rows = zoo_rows()
    catalog = write_catalog(root / "catalog.csv", rows)
    labels = pd.DataFrame(rows).drop(columns=["source", "kind", "base"])
    write_vectors(make_table([r["name"] for r in rows], zoo_vectors(rows), labels), root / "vectors.parquet")
    return {"root": root, "catalog": catalog, "rows": rows}


def test_measures_on_known_similarities():
    S = np.array([[1, .9, .1, .0], [.9, 1, .0, .1], [.1, .0, 1, .8], [.0, .1, .8, 1]])
    assert silhouette(S, ["a", "a", "b", "b"]) > 0.8
    assert silhouette(S, ["a", "b", "a", "b"]) < 0
    assert silhouette(S, ["a"] * 4) is None
    assert loo_accuracy(S, ["a", "a", "b", "b"]) == 1.0
    assert loo_accuracy(S, ["a", "b", "b", "b"]) == 0.5


def test_report_on_a_pool_with_known_structure(zoo):
    report = build_report(zoo["catalog"], baselines=False)            # vectors.parquet beside the catalog
    json.dumps(report)                                                 # plain JSON
    assert report["n_models"] == 23 and report["scopes"]["primary"]["n"] == 15 and report["scopes"]["all"]["n"] == 21
    (da,) = report["embeddings"]
    assert da["name"] == "Delta Activations" and da["dim"] == 48
    assert da["silhouette"]["primary"] > 0.7 and da["silhouette"]["all"] > 0.7
    assert da["loo_accuracy"] == {"primary": 1.0, "all": 1.0} and da["robust_same_domain"] == 1.0
    assert len(report["additivity"]) == 2
    for a in report["additivity"]:
        assert a["cos_sum"] == pytest.approx(1.0) and a["rank_of_sum"] == 1 and a["n_compared"] == 23
        assert a["max_cos_others"] < a["cos_sum"] and a["mean_cos_others"] < a["max_cos_others"]
    assert report["additivity"][0]["parts"] == ["math-gsm8k-first", "coding-mbpp-first"]
    robust = {r["name"]: r for r in report["robustness"]}
    assert len(robust) == 6 and all(r["same_domain"] and r["same_dataset"] for r in robust.values())
    assert robust["math-gsm8k-full"]["variant"] == "full" and robust["math-gsm8k-full"]["nearest"].startswith("math-")
    text = format_report(report)
    assert "Delta Activations" in text and "silhouette" in text and "Additivity" in text and "Robustness" in text


def test_report_sees_a_pool_without_structure(zoo, tmp_path):
    rows = zoo["rows"]
    noise = np.random.default_rng(5).normal(size=(len(rows), 48))
    labels = pd.DataFrame(rows).drop(columns=["source", "kind", "base"])
    path = write_vectors(make_table([r["name"] for r in rows], noise, labels), tmp_path / "noise.parquet")
    (da,) = build_report(zoo["catalog"], path, baselines=False)["embeddings"]
    assert da["silhouette"]["primary"] < 0.2 and da["loo_accuracy"]["all"] < 0.6


def test_missing_vectors_label_and_baselines_become_notes(zoo, tmp_path):
    rows = zoo["rows"]
    keep = rows[:-3]                                                   # drops the last full model and both mixtures
    labels = pd.DataFrame(keep).drop(columns=["source", "kind", "base"])
    path = write_vectors(make_table([r["name"] for r in keep], zoo_vectors(rows)[:-3], labels), tmp_path / "v.parquet")
    report = build_report(zoo["catalog"], path, baselines=True)        # model folders do not exist
    notes = " ".join(report["notes"])
    assert report["n_models"] == 20 and "3 model(s)" in notes and "could not be computed" in notes
    assert report["additivity"] == [] and [e["key"] for e in report["embeddings"]] == ["delta_activations"]
    with pytest.raises(DeltaAtlasError, match="'topic'"):
        build_report(zoo["catalog"], path, baselines=False, label="topic")


def test_report_with_every_baseline_on_the_tiny_pool(tiny_pool, tmp_path):
    rows = [{"name": n, "source": str(p), "kind": k, "base": str(tiny_pool["base"]), "domain": "ab"[i % 2],
             "dataset": "xy"[i % 2], "variant": "primary" if i < 4 else "full"}
            for i, (n, p, k) in enumerate([*[(n, p, "lora") for n, p in tiny_pool["loras"].items()],
                                            *[(n, p, "full") for n, p in tiny_pool["fulls"].items()]])]
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    X = np.random.default_rng(0).normal(size=(len(rows), 64))
    write_vectors(make_table([r["name"] for r in rows], X, pd.DataFrame(rows)[["name", "domain"]]),
                  tmp_path / "vectors.parquet")
    events = []
    report = build_report(catalog, progress=events.append)
    keys = [e["key"] for e in report["embeddings"]]
    assert keys == ["weights", "mask", "outputs", "delta_activations"] and not report["notes"]
    weights = report["embeddings"][0]
    assert weights["dim"] > 10_000 and weights["silhouette"]["primary"] is not None
    assert weights["loo_accuracy"]["all"] is not None and len(report["robustness"]) == 2 and events
    assert "salient mask" in format_report(report)


def test_report_command(zoo, capsys):
    assert main(["report", "--catalog", str(zoo["catalog"]), "--no-baselines", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["embeddings"][0]["loo_accuracy"]["primary"] == 1.0
    assert main(["report", "--catalog", str(zoo["catalog"]), "--no-baselines"]) == 0
    text = capsys.readouterr().out
    assert "silhouette" in text and "Delta Activations" in text and "mix-gsm8k+mbpp" in text
    assert main(["report", "--catalog", str(zoo["root"] / "nope.csv"), "--no-baselines"]) == 2
    assert "nope.csv" in capsys.readouterr().err
