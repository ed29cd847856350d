"""How it works: the method in plain words and pictures, and the evidence measured on the demo zoo."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # the page runs on its own too (AppTest.from_file, streamlit run pages/how_it_works.py)
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from pages import _charts as charts  # noqa: E402
from pages import _ui as ui  # noqa: E402

REPORT = Path(ROOT) / "data" / "demo" / "report.json"
PAPER = pd.DataFrame({  # the paper's Table (silhouette of the domain labels, 15 LoRA models per base)
    "embedding": ["flattened adapter weights", "salient mask", "output sentence embeddings", "Delta Activations"],
    "Llama-3.1-8B": [-0.035, 0.133, 0.221, 0.645], "Gemma-2-9B": [-0.060, 0.208, -0.053, 0.545],
    "Qwen-2.5-7B": [-0.034, 0.229, 0.096, 0.653], "average": [-0.043, 0.190, 0.087, 0.614]})


@st.cache_data(show_spinner=False)
def load_report(path: str, mtime: int) -> dict | None:
    return json.loads(Path(path).read_text()) if mtime else None


def main() -> None:
    pool = ui.page_setup("How it works")
    st.title("How it works")
    st.markdown(
        "Thousands of language models are **finetuned** versions of a few base models: someone took a base model and "
        "trained it a little more on their own data — contracts, maths problems, medical questions, code. Their names "
        "rarely say what they learned. Delta Atlas finds out by looking at **how each one changed its base**.")
    st.subheader("1. A delta activation, in one picture")
    st.plotly_chart(charts.delta_diagram(), key="how_diagram", config={"staticPlot": True})
    st.markdown(
        "The base model and the finetuned model read the **same five plain questions** (“Please provide a "
        "response.”, worded five ways, about no topic at all). Inside, each model turns what it read into a long list "
        "of numbers — its *inner state* at the last word. The finetuned model's inner state differs from the base's a "
        "little, and **that difference, averaged over the five questions, is the model's delta activation**: one "
        "list of numbers per model, which the app calls its *vector*.\n\n"
        "Models trained on similar data change the base in a similar direction, so their vectors point the same "
        "way. The **similarity** of two models (from −1 to 1) measures how much their vectors point the same way. "
        "The map squeezes these long vectors onto a flat page so that similar models sit close together.")
    with ui.guard("drawing the demo zoo's directions"):
        directions(pool)
    report = load_report(str(REPORT), ui.stamp(REPORT))
    st.subheader("3. Does it work? Grouping models by what they learned")
    evidence(report)


def directions(pool: ui.Pool) -> None:
    """Each domain's mean vector in this pool, flattened to 2-D: same direction = same kind of change."""
    data = ui.pool_data(pool)
    if len(data.frame) < 3 or "domain" not in data.frame.columns:
        return
    domains = data.frame["domain"].astype(str)
    means = {d: data.X[(domains == d).to_numpy()].mean(0) for d in sorted(set(domains)) if d}
    if len(means) < 2:
        return
    M = np.stack(list(means.values()))
    centred = M - 0  # directions from the base (the origin), not from their average
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    flat = centred @ vt[:2].T
    flat /= np.abs(flat).max()
    st.subheader("2. On this pool: one arrow per domain")
    left, right = st.columns([3, 2])
    left.plotly_chart(charts.arrows_figure({d: tuple(p) for d, p in zip(means, flat)}), key="how_arrows",
                      config={"staticPlot": True})
    right.markdown("Each arrow is the average vector of one domain's models in "
                   f"**{pool.title}**, drawn flat. Arrows that point apart mean the domains changed the base in "
                   "different ways — which is why the map can tell them apart without being told the labels.")


def evidence(report: dict | None) -> None:
    st.markdown(
        "A good description should put models trained on the same kind of data together. The **silhouette score** "
        "measures that on a scale from −1 to 1: near 1, each domain forms its own tight group; near 0, the groups "
        "are mixed. Below, Delta Activations against the other ways to describe a model that the paper compares.")
    if report is None:
        st.info("The demo zoo's report is not built yet (`python -m core report` writes data/demo/report.json). "
                "Here are the paper's numbers, on real 8-billion-parameter models:")
        st.dataframe(PAPER, hide_index=True, width="stretch")
        return
    st.json(report, expanded=False)


main()
