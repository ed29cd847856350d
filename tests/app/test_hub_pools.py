"""Ready catalogs in data/catalogs (the paper's pools on the Hub) in the pool selector, and the Map page's check of
declared datasets against the neighbours, with Streamlit's AppTest. Nothing here loads a model or contacts the Hub."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from tests.app.conftest import PAGES, ROOT, TIMEOUT, problems

PAPER = ROOT / "data" / "catalogs" / "paper-llama-3.1-8b.csv"
DATASETS = {"legalbench": "legal", "gsm8k": "math", "pubmedqa": "medical", "hellaswag": "commonsense", "opc": "coding"}
EXPANDER = "Models whose declared dataset disagrees with their neighbours"


def app() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)


def lineage_pool(folder: Path, dim: int = 32, seed: int = 0) -> Path:
    """A pool shaped like the paper's (5 datasets x 3 splits) with vectors only, where the model trained on the
    third split of gsm8k declares opc: its catalog row and its behaviour disagree."""
    from core.pool.catalog import write_catalog
    from core.pool.vectors import make_table, write_vectors

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(DATASETS), dim))
    rows, vectors = [], []
    for d, (dataset, domain) in enumerate(DATASETS.items()):
        for split in ("first", "second", "third"):
            name = f"{dataset}-{split}"
            declared = "opc" if name == "gsm8k-third" else dataset
            rows.append({"name": name, "source": f"./models/{name}", "kind": "lora", "base": "./base",
                         "domain": DATASETS[declared], "dataset": declared, "split": split})
            vectors.append(centres[d] + 0.3 * rng.normal(size=dim))
    folder.mkdir(parents=True, exist_ok=True)
    catalog = write_catalog(rows, folder / "catalog.csv")
    labels = pd.DataFrame(rows).drop(columns=["source", "kind", "base"])
    write_vectors(make_table([r["name"] for r in rows], np.asarray(vectors), labels), folder / "vectors.parquet")
    return catalog


def test_the_paper_pools_are_in_the_selector_and_say_what_they_need(synthetic_env, monkeypatch):
    monkeypatch.setenv("DELTA_ATLAS_DATA_DIR", str(ROOT / "data"))  # the project's own data folder, read only
    at = app().run()
    options = at.sidebar.selectbox(key="catalog").options
    for short in ("llama-3.1-8b", "qwen-2.5-7b", "gemma-2-9b"):
        assert f"paper-{short}" in options  # the selector shows titles (file names here)
    at.sidebar.selectbox(key="catalog").set_value(str(PAPER)).run()
    assert problems(at) == []
    message = next(i.value for i in at.info if "Hugging Face Hub" in i.value)
    assert "needs a GPU and the Hugging Face Hub" in message and "meta-llama/Llama-3.1-8B" in message
    command = message[message.index("python -m core embed"):].split("```")[0].replace("\\\n", " ").split()
    assert command == ["python", "-m", "core", "embed", "--catalog", "data/catalogs/paper-llama-3.1-8b.csv",
                       "--out", "data/catalogs/paper-llama-3.1-8b.vectors.parquet"]  # a shell command, as shown
    assert any("about 16 GB" in m.value and "a second" in m.value for m in at.markdown)   # how long, in words
    models = at.dataframe[0].value
    assert len(models) == 15 and models["on the Hub"].str.startswith("ASethi04/").all()  # what the pool holds
    assert not at.button  # nothing to click that would download 15 models of 8B parameters from a web page
    for page in PAGES:
        at.switch_page(f"pages/{page}").run()
        assert len(at.exception) == 0, page


def test_the_map_lists_models_whose_dataset_disagrees_with_their_neighbours(tmp_path, monkeypatch):
    catalog = lineage_pool(tmp_path / "lineage")
    for key, value in {"DELTA_ATLAS_CATALOG": catalog, "DELTA_ATLAS_DATA_DIR": tmp_path / "data",
                       "DELTA_ATLAS_USER_DIR": tmp_path / "user", "DELTA_ATLAS_CACHE": tmp_path / "cache"}.items():
        monkeypatch.setenv(key, str(value))
    at = app().run()
    assert problems(at) == []
    assert {"domain", "dataset", "split"} <= set(at.selectbox(key="map_colour").options)  # every label colours
    expander = next(e for e in at.expander if e.label == EXPANDER)
    odd = expander.dataframe[0].value
    assert list(odd["name"]) == ["gsm8k-third"]
    assert odd.iloc[0][["declared", "neighbours_say", "agreement"]].tolist() == ["opc", "gsm8k", "0 of 2"]
    assert any("closest models" in m.value for m in expander.markdown)


def test_no_expander_without_a_dataset_label(synthetic_env):
    at = app().run()
    assert problems(at) == []
    assert EXPANDER not in [e.label for e in at.expander]
