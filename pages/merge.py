"""Merge: combine a few adapters into one, see whether it beats each of them on your examples, and download it."""
from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from pages.parts import charts, jobs, pools, task_examples, ui

MERGE_KEY = "merge_result"   # {"catalog", "result", "title"}: the last merge of this session
MERGE_JOB = "merge_job"      # the session's (and the URL's) merge job id
NAMES_KEY = "merge_names"
FORM = (NAMES_KEY, "merge_method", "merge_weights", "merge_budget", "merge_source", "merge_sample")  # see jobs.restore_form
WEIGHT_MODES = {  # label -> merge_adapters' weights argument
    "Automatic: by similarity to the task": "auto",
    "Searched on the examples (slower, often best)": "search",
    "By hand": "hand",
}


def main() -> None:
    pool = ui.page_setup("Merge")
    st.title("Merge adapters")
    st.caption("Merging adds several adapters' changes into one adapter. Pick adapters that fit your task (the Find "
               "page or the map can pre-fill them), choose how to weigh them, and compare the merged adapter with "
               "the base and with each ingredient on your examples.")
    with ui.guard("preparing the merge"):
        data = pools.pool_data(pool)
        catalog = pools.combined_catalog(pool, data)
        have = set(data.frame["name"])
        adapters = [e.name for e in catalog if e.kind != "full" and e.name in have]
        if len(adapters) < 2:
            st.info("This pool has fewer than two adapters with vectors: there is nothing to merge.")
            return
        jobs.restore_form(MERGE_JOB)
        names = choose_adapters(pool, adapters, catalog)
        method, weights, budget = choose_method(names)
        task = ui.remembered(ui.TASK_KEY, pool)
        st.markdown("**Examples to measure the merge on**")
        title, examples = task_examples.examples_picker("merge", last_task=task or jobs.restored_examples(MERGE_JOB))
        ready = len(names) >= 2 and bool(examples)
        if st.button("Merge", type="primary", disabled=not ready, key="merge_go"):
            same_task = task is not None and examples is task["examples"]
            run(pool, data, catalog, names, method, weights, budget, title, examples,
                task["result"].vector if same_task else None)
        jobs.keep_result(jobs.finished_job(MERGE_JOB), MERGE_KEY, pool)
        show_result(pool, data)


def choose_adapters(pool: pools.Pool, adapters: list[str], catalog) -> list[str]:
    """The ingredients, pre-filled from the last task search or map selection (whichever is newer)."""
    offer = ui.remembered(ui.CANDIDATES_KEY, pool)
    task = ui.remembered(ui.TASK_KEY, pool)
    if offer is None and task is not None:
        from core.reuse.fit import merge_candidates

        helping, _ = merge_candidates(getattr(task["result"], "gains", None), catalog)
        if helping:
            offer = {"names": helping[:3], "why": f"the models that help with “{task['title']}”",
                     "token": task["token"]}
    if NAMES_KEY in st.session_state:  # names of another pool, or of a model since removed
        st.session_state[NAMES_KEY] = [n for n in st.session_state[NAMES_KEY] if n in adapters]
    if offer is not None and st.session_state.get("_merge_applied") != offer["token"]:
        st.session_state[NAMES_KEY] = [n for n in offer["names"] if n in adapters]
        st.session_state["_merge_applied"] = offer["token"]
    names = st.multiselect("Adapters to merge", adapters, key=NAMES_KEY, placeholder="Choose two or more adapters",
                           help="Only LoRA adapters of this pool's base can be merged.")
    if offer is not None:
        st.caption(f"Pre-filled with {ui.plain(offer['why'])}.")
    if len(names) < 2:
        st.info("Choose at least two adapters — or find them from a task on the Find page.")
    return names


def choose_method(names: list[str]) -> tuple[str, str | list[float], int]:
    from core.reuse.merge import SEARCH_BUDGET
    from core.reuse.merge_plan import METHODS

    left, right = st.columns(2)
    method = left.selectbox("Method", list(METHODS), index=list(METHODS).index("ties"), key="merge_method",
                            format_func=lambda m: f"{m} — {METHODS[m].about}")
    mode = WEIGHT_MODES[right.radio("Weights", list(WEIGHT_MODES), key="merge_weights")]
    budget = SEARCH_BUDGET
    if mode == "hand":
        cols = st.columns(max(len(names), 1))
        weights = [float(col.number_input(name, -2.0, 2.0, 1.0, 0.1, key=f"merge_w_{name}"))
                   for col, name in zip(cols, names)]
        return method, weights, budget
    if mode == "search":
        budget = int(right.number_input("How many weightings to try", 5, 200, SEARCH_BUDGET, key="merge_budget",
                                        help="Each try merges the adapters with other weights and measures the "
                                             "result on your examples; more tries take longer."))
    return method, mode, budget


def run(pool, data, catalog, names, method, weights, budget, title, examples, task_vector) -> None:
    """Queue the merge on the pool's base (into a temporary folder, offered for download afterwards)."""
    from core.reuse.merge import merge_adapters

    out_dir = Path(tempfile.mkdtemp(prefix="delta-atlas-merge-")) / "merged-adapter"
    vectors, models = data.core_vectors, jobs.shared_models()

    def work(progress):
        return merge_adapters(catalog, names, method, weights, examples, out_dir, task_vector=task_vector,
                              progress=progress, vectors=vectors, budget=budget, models=models)

    jobs.start_job(MERGE_JOB, data.base, "merge", work, pool, form=(*FORM, *(f"merge_w_{n}" for n in names)),
                 title=title, examples=examples)


def show_result(pool: pools.Pool, data: pools.PoolData) -> None:
    merged = ui.remembered(MERGE_KEY, pool)
    if not merged:
        return
    report = merged["result"]
    st.divider()
    st.subheader(ui.plain(f"The merge of {', '.join(report.ingredients)}"))
    st.markdown(verdict(report.losses))
    left, right = st.columns([2, 3], gap="medium")
    with left:
        if report.losses:
            st.plotly_chart(charts.loss_figure(report.losses), key="merge_losses")
        table = pd.DataFrame({"adapter": report.ingredients, "weight": report.weights})
        if report.similarities:
            table["similarity to the task"] = [report.similarities.get(n) for n in report.ingredients]
        st.dataframe(table, hide_index=True, width="stretch", column_config={
            "weight": st.column_config.NumberColumn(format="%.3f"),
            "similarity to the task": st.column_config.NumberColumn(format="%.3f")})
        st.caption(f"Method {report.method}, weights {report.weights_mode}, {report.seconds:.0f} s.")
        downloads(report)
    with right:
        merge_map(data, report)


def verdict(losses: dict[str, float]) -> str:
    """Does the merge beat the base model on the examples? In plain words; the losses are in the chart."""
    from core.reuse.fit import gain_words, helps

    if "merged" not in losses or "base" not in losses:
        return ""
    gain = (losses["base"] - losses["merged"]) / losses["base"]
    ingredients = {k: v for k, v in losses.items() if k not in ("base", "merged")}
    best = min(ingredients, key=ingredients.get) if ingredients else None
    best_gain = (losses["base"] - ingredients[best]) / losses["base"] if best else None
    if helps(gain):
        text = f"**The merge helps**: it {gain_words(gain)} compared with the base model"
        if best and ingredients[best] < losses["merged"]:
            return text + f", but {ui.plain(best)} alone does better (it {gain_words(best_gain)})."
        return text + ", and more than any of its ingredients alone."
    text = f"**The merge does not beat the base model** on your examples: it {gain_words(gain)}"
    if best and helps(best_gain):
        return text + f". {ui.plain(best)} alone {gain_words(best_gain)}: use it instead of the merge."
    return text + ". Keep the base model, or try other adapters."


def merge_map(data: pools.PoolData, report) -> None:
    """Where the merged adapter should land (the weighted sum of its ingredients) and where it did land."""
    if report.measured_vector is None:
        return
    layout = pools.map_layout(data)
    embedding = layout.embedding
    marks = []
    for vector, label, symbol, colour, where in [
            (report.predicted_vector, "predicted", "diamond-open", "#d62728", "bottom center"),
            (report.measured_vector, "merged", "star", "#111111", "top center")]:
        if vector is not None:
            x, y = layout.place(np.asarray(vector))[0]
            marks.append(charts.Mark(float(x), float(y), label, symbol=symbol, colour=colour, text_position=where))
    frame = data.frame
    labels = [c for c in frame.columns if c not in ("name", "origin")]
    colour_by = "domain" if "domain" in labels else (labels[0] if labels else None)
    colour = list(frame[colour_by].astype(str)) if colour_by else ["model"] * len(frame)
    fig = charts.map_figure(frame, embedding, colour, colour_by or "", charts.hover_texts(frame, labels),
                            focus=report.ingredients, marks=marks, focus_label="ingredients")
    st.plotly_chart(fig, key="merge_map")
    cosine = report.predicted_vs_measured_cosine
    if cosine is not None:
        how = "right where" if cosine > 0.9 else "near where" if cosine > 0.6 else "away from where"
        st.caption(f"★ = the merged adapter, measured; ◇ = where the weighted sum of its ingredients predicts it. "
                   f"It landed {how} predicted (similarity {cosine:.2f}); ringed = the ingredients.")


def downloads(report) -> None:
    out = Path(report.out_dir) if report.out_dir else None
    if out is None or not out.is_dir():
        st.caption("The merged adapter's files are gone (the server was restarted): merge again to download them.")
        return
    cols = st.columns(2)
    cols[0].download_button("Merged adapter (zip)", data=lambda: zip_folder(out), file_name="merged-adapter.zip",
                            mime="application/zip", on_click="ignore", key="merge_zip")
    recipe = out / "recipe.yaml"
    if recipe.is_file():
        cols[1].download_button("Recipe (YAML)", data=recipe.read_bytes(), file_name="merge-recipe.yaml",
                                mime="text/yaml", on_click="ignore", key="merge_recipe")
    st.caption("Load it with PEFT: `PeftModel.from_pretrained(base, folder)`; replay it with "
               "`python -m core merge --recipe merge-recipe.yaml --out FOLDER`.")


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                archive.write(path, Path(folder.name) / path.relative_to(folder))
    return buffer.getvalue()


main()
