"""Find models for a task: a few examples in, the models that learned the closest thing out (and a star on the map)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # the page runs on its own too (AppTest.from_file, streamlit run pages/find.py)
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from pages.parts import charts  # noqa: E402
from pages.parts import pools  # noqa: E402
from pages.parts import ui  # noqa: E402

SHOWN_MATCHES = 15
TO_MERGE = 3          # best matches offered to the Merge page
FIND_JOB = "find_job"  # the session's (and the URL's) task-search job id
COMPARE_WORDS = {"delta": "The paper's method (default)", "domain-lens": "The domain lens"}  # core COMPARISONS


def main() -> None:
    pool = ui.page_setup("Find models for a task")
    st.title("Find models for your task")
    st.caption("Give a handful of examples of what you want a model to do. The app teaches the base model your task "
               "for a short moment, measures how that changed it (its delta activation), and ranks the models of the "
               "pool that changed it the same way.")
    with ui.guard("loading the pool"):
        data = pools.pool_data(pool)
        if len(data.frame) == 0:
            st.info("This pool has no vectors yet: open the Map page to compute them first.")
            return
        title, examples = ui.examples_picker("find")
        with st.expander("Settings"):
            steps = st.number_input("Finetuning steps", 1, 1000, value=default_steps(pool), key="find_steps",
                                    help="More steps describe the task more precisely but take longer.")
            compare = st.radio("Compare your task with the models by", list(COMPARE_WORDS), key="find_compare",
                               format_func=COMPARE_WORDS.get,
                               help="The paper's method compares the raw changes. The domain lens looks only at "
                                    "the directions in which the pool's domains differ, so that models which merely "
                                    "answer in the same form (a letter, a label) weigh less. It needs the models' "
                                    "domain labels.")
            for line in measured_lines(pool):
                st.caption(line)
        st.caption("This runs a short finetune of the base model: on a laptop CPU, under a minute for the demo zoo "
                   "with 20 examples (fewer steps under Settings is faster, and a little less precise).")
        if st.button("Find matching models", type="primary", disabled=not examples, key="find_go"):
            search(pool, data, title, examples, int(steps), compare)
        ui.keep_result(ui.finished_job(FIND_JOB), ui.TASK_KEY, pool)
        show_result(pool, data)


def default_steps(pool: pools.Pool) -> int:
    """The pool's own step count (its search.json), else the engine's default; a broken file falls back too (the
    search itself then says what to fix)."""
    from core.errors import DeltaAtlasError
    from core.reuse.task import TASK_STEPS, task_steps

    try:
        return task_steps(pool.catalog_path)
    except DeltaAtlasError:
        return TASK_STEPS


def measured_lines(pool: pools.Pool) -> list[str]:
    """Both comparisons' measured accuracy on this pool's hand-written tasks (bench/eval_find.py --summary)."""
    import json

    path = pool.catalog_path.parent / "search_quality.json"
    try:
        quality = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return []
    lines = []
    for key, name in (("ood", "delta"), ("ood_domain-lens", "domain-lens")):
        q = quality.get(key)
        if isinstance(q, dict) and "top1" in q:
            lines.append(f"{COMPARE_WORDS[name]}: the best match had the right domain for {q['top1']} tasks written "
                         "by hand for this project.")
    return lines


def search(pool: pools.Pool, data: pools.PoolData, title: str, examples: list, steps: int,
           compare: str = "delta") -> None:
    """Queue the search on the pool's base; the page follows it (and finds it again after a reload)."""
    from core.reuse.task import find_models

    catalog = pools.combined_catalog(pool, data)
    projector = pools.projector(data)
    vectors, models = data.core_vectors, ui.shared_models()

    def work(progress):
        return find_models(examples, catalog, vectors=vectors, projector=projector, steps=steps, progress=progress,
                           models=models, compare=compare)

    ui.start_job(FIND_JOB, data.base, "search", work, pool, title=title, examples=examples, base=data.base)


def show_result(pool: pools.Pool, data: pools.PoolData) -> None:
    task = ui.remembered(ui.TASK_KEY, pool)
    if not task:
        return
    result, title = task["result"], task["title"]
    st.divider()
    st.subheader(f"Models closest to “{title}”")
    lens = " Compared through the domain lens." if getattr(result, "compare", "delta") == "domain-lens" else ""
    st.caption(f"Searched in {result.seconds:.0f} s, on {len(task['examples'])} examples.{lens}")
    groups = result.group_matches
    if getattr(result, "no_close_match", False):
        st.warning(result.match_note, icon="🔎")
    elif len(groups):
        best = groups.iloc[0]
        st.markdown(f"The task sits closest to the **{best['group']}** models ({best['group_by']}; similarity "
                    f"{best['similarity']:.2f}, the mean of its 3 closest of {int(best['models'])} models).")
        if getattr(result, "match_note", ""):
            st.caption(result.match_note)
    table_col, map_col = st.columns([5, 6], gap="medium")
    with table_col:
        matches = result.matches.head(SHOWN_MATCHES)
        labels = [c for c in matches.columns if c not in ("name", "similarity")][:3]
        st.dataframe(matches[["name", "similarity", *labels]], hide_index=True, width="stretch", column_config={
            "similarity": st.column_config.ProgressColumn("similarity", min_value=0.0, max_value=1.0, format="%.3f",
                                                          help="Cosine similarity of the model's vector to the "
                                                               "task's: 1 = the same change, 0 = unrelated.")})
        if len(result.losses):
            st.plotly_chart(charts.losses_curve(result.losses), key="find_losses")
        names = list(matches["name"].head(TO_MERGE))
        if st.button(f"Merge the {len(names)} best matches", key="find_to_merge"):
            ui.remember(ui.CANDIDATES_KEY, pool, names=names, why=f"the best matches for “{title}”")
            st.success("Ready on the Merge page.")
            ui.link("pages/merge.py", "Merge")
    with map_col:
        task_map(data, result, title)


def task_map(data: pools.PoolData, result, title: str) -> None:
    """The pool's map (as drawn on the Map page) with the task as a star and its best matches ringed."""
    settings = pools.map_settings()
    projector = pools.projector(data, settings)
    embedding = np.asarray(projector.embedding_)
    try:
        position = np.asarray(projector.transform(result.vector[None, :]))[0]
    except Exception:  # noqa: BLE001 - a layout without transform: fall back to where the search placed it
        position = result.position
    frame = data.frame
    labels = [c for c in frame.columns if c not in ("name", "origin")]
    colour_by = "domain" if "domain" in labels else (labels[0] if labels else None)
    colour = list(frame[colour_by].astype(str)) if colour_by else ["model"] * len(frame)
    marks = [] if position is None else [charts.Mark(float(position[0]), float(position[1]), "your task")]
    fig = charts.map_figure(frame, embedding, colour, colour_by or "", charts.hover_texts(frame, labels),
                            focus=list(result.matches["name"].head(TO_MERGE)), marks=marks,
                            focus_label="best matches")
    st.plotly_chart(fig, key="find_map")
    st.caption("★ = your task, placed among the models by the same map; ringed = the best matches.")


main()
