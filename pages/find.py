"""Find models for a task: a few examples in, the models that learned the closest thing out (and a star on the map)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.pool.folder import SEARCH_QUALITY_FILE, quality_key
from core.reuse.fit import HELP_MARGIN, HELP_SHARE
from core.reuse.task import COMPARISON_TITLES, COMPARISONS, default_compare
from pages.parts import charts, jobs, pools, task_examples, ui

SHOWN_MATCHES = 15
TO_MERGE = 3          # best matches offered to the Merge page
FIND_JOB = "find_job"  # the session's (and the URL's) task-search job id
FORM = ("find_source", "find_sample", "find_steps", "find_compare")  # put back when a reloaded tab finds the job


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
        jobs.restore_form(FIND_JOB)
        title, examples = task_examples.examples_picker("find", last_task=jobs.restored_examples(FIND_JOB))
        with st.expander("Settings"):
            steps = st.number_input("Teaching steps", 1, 1000, value=default_steps(pool), key="find_steps",
                                    help="How long the base model studies your examples (finetuning steps): more "
                                         "steps describe your task more precisely but take longer.")
            default = default_compare(data.frame)
            compare = st.radio("Compare your task with the models by", list(COMPARISONS), key="find_compare",
                               index=list(COMPARISONS).index(default),
                               format_func=lambda c: COMPARISON_TITLES[c] + (" (default here)" if c == default else ""),
                               help="The paper's method compares the raw changes. The domain lens looks only at "
                                    "the directions in which the pool's domains differ, so that models which merely "
                                    "answer in the same form (a letter, a label) weigh less; it needs the models' "
                                    "domain labels. The cluster lens does the same with the map's own groups.")
            for line in measured_lines(pool):
                st.caption(line)
        st.caption("This teaches the base model your task for a short moment, then checks the closest models on "
                   "your examples: on a 2-core laptop CPU about one to two minutes for the demo zoo (measured in "
                   "bench/README.md; fewer steps under Settings is faster, and a little less precise).")
        if st.button("Find matching models", type="primary", disabled=not examples, key="find_go"):
            search(pool, data, title, examples, int(steps), compare)
        jobs.keep_result(jobs.finished_job(FIND_JOB), ui.TASK_KEY, pool)
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

    path = pool.catalog_path.parent / SEARCH_QUALITY_FILE
    try:
        quality = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return []
    lines = []
    for name in COMPARISONS:
        q = quality.get(quality_key("ood", name))
        if isinstance(q, dict) and "top1" in q:
            lines.append(f"{COMPARISON_TITLES[name]}: the best match had the right domain for {q['top1']} tasks written "
                         "by hand for this project.")
    return lines


def search(pool: pools.Pool, data: pools.PoolData, title: str, examples: list, steps: int,
           compare: str | None = None) -> None:
    """Queue the search on the pool's base; the page follows it (and finds it again after a reload)."""
    from core.reuse.task import find_models

    catalog = pools.combined_catalog(pool, data)
    projector = pools.projector(data)
    vectors, models = data.core_vectors, jobs.shared_models()

    def work(progress):
        return find_models(examples, catalog, vectors=vectors, projector=projector, steps=steps, progress=progress,
                           models=models, compare=compare)

    jobs.start_job(FIND_JOB, data.base, "search", work, pool, form=FORM, title=title, examples=examples, base=data.base)


def show_result(pool: pools.Pool, data: pools.PoolData) -> None:
    task = ui.remembered(ui.TASK_KEY, pool)
    if not task:
        return
    result, title = task["result"], task["title"]
    st.divider()
    st.subheader(f"Models for “{ui.plain(title)}”")
    verdict_box(result)
    with st.expander("Details: the numbers behind this answer"):
        for line in details(result, len(task["examples"])):
            st.caption(line)
    table_col, map_col = st.columns([3, 2], gap="medium")
    with table_col:
        if result.verdict == "none":
            st.markdown("**The least bad matches** (none of them fits your task well)")
        else:
            st.markdown("**The closest models**")
        st.dataframe(matches_table(result), hide_index=True, width="stretch", column_config={
            "model": st.column_config.TextColumn("model", width=170),
            "domain": st.column_config.TextColumn("domain", width=85),
            "helps with your examples?": st.column_config.TextColumn(
                "helps with your examples?", width=155,
                help="Measured on your examples for the closest models: how much lower (or higher) their error is "
                     "than the untouched base model's."),
            "better on": st.column_config.TextColumn(
                "better on", width=70,
                help="On how many of your examples the model's error is lower than the base model's: a gain on most "
                     "of them is worth more than one carried by an example or two."),
            "similarity": st.column_config.NumberColumn(
                "similarity", format="%.2f", width=70, help="How alike the model's change and your task's are: 1 = the same "
                                                  "change, 0 = unrelated.")})
        merge_offer(pool, data, result, title)
    with map_col:
        task_map(data, result, title)


def verdict_box(result) -> None:
    """The verdict in words, coloured by what it means for the user."""
    show = {"strong": st.success, "weak": st.info, "none": st.warning}.get(result.verdict, st.info)
    icon = {"strong": ":material/check_circle:", "weak": ":material/help:"}.get(result.verdict, ":material/block:")
    show(ui.plain(result.headline or result.match_note), icon=icon)


def details(result, n_examples: int) -> list[str]:
    """The numbers, for whoever wants them."""
    lens = {"domain-lens": " through the domain lens", "cluster-lens": " through the cluster lens"}
    lines = [f"Searched in {result.seconds:.0f} s on {n_examples} examples, compared{lens.get(result.compare, '')}."]
    if result.match_note:
        lines.append(result.match_note)
    if result.gains is not None and len(result.gains):
        base = float(result.gains["base_loss"].iloc[0])
        lines.append(f"Error on your examples (mean loss per answer token): the base model {base:.3f}; "
                     + "; ".join(f"{r.name} {r.loss:.3f}" for r in result.gains.itertuples() if pd.notna(r.loss))
                     + f". A model “helps” when it lowers the base's error by at least {100 * HELP_MARGIN:.0f}%"
                     + (f" and does better than the base on at least {100 * HELP_SHARE:.0f}% of your examples"
                        if HELP_SHARE else "") + ".")
    if len(result.losses):
        lines.append(f"The task was learned in {len(result.losses)} steps (final loss "
                     f"{np.mean(result.losses[-10:]):.3f}).")
    return lines


def matches_table(result) -> pd.DataFrame:
    """Model, its domain (or first label), whether it helps (for the measured ones) and the similarity."""
    matches = result.matches.head(SHOWN_MATCHES)
    labels = [c for c in matches.columns if c not in ("name", "similarity")][:1]
    short = {} if result.gains is None else {
        r.name: (r.short if "short" in result.gains else r.words) for r in result.gains.itertuples()}
    table = matches[["name", *labels]].copy()
    table["helps with your examples?"] = [short.get(name, "not checked") for name in matches["name"]]
    if result.gains is not None and "better" in result.gains:
        counts = {r.name: f"{int(r.better)} of {int(r.compared)}" for r in result.gains.itertuples()
                  if pd.notna(r.better) and r.compared}
        table["better on"] = [counts.get(name, "") for name in matches["name"]]
    table["similarity"] = matches["similarity"].to_numpy()
    return table.rename(columns={"name": "model"})


def merge_offer(pool: pools.Pool, data: pools.PoolData, result, title: str) -> None:
    """Offer a merge of exactly the models that help, naming what is left out and why, before the click."""
    from core.reuse.fit import merge_candidates

    catalog = pools.combined_catalog(pool, data)
    take, left_out = merge_candidates(result.gains, catalog)
    take = [name for name in take if name in set(data.frame["name"])]
    if left_out and take:
        st.caption("Left out of a merge: " + "; ".join(f"{ui.plain(n)} ({why})" for n, why in left_out.items()) + ".")
    if len(take) >= 2:
        names = take[:TO_MERGE]
        if st.button(f"Merge the {len(names)} models that help", key="find_to_merge", type="secondary",
                     help="Sends exactly these adapters to the Merge page: " + ", ".join(names)):
            ui.remember(ui.CANDIDATES_KEY, pool, names=names, why=f"the models that help with “{title}”")
            st.success("Ready on the Merge page: " + ui.plain(", ".join(names)) + ".")
            ui.link("pages/merge.py", "Open the Merge page")
    elif len(take) == 1:
        st.info(f"Only {ui.plain(take[0])} helps with your examples: use it as it is (a merge needs two adapters "
                "that help).")
    elif result.gains is not None:
        st.info("None of the closest models helps with your examples, so no merge is offered: merging them would "
                "not make a model that answers your task better than the base model.")


def task_map(data: pools.PoolData, result, title: str) -> None:
    """The pool's map (as drawn on the Map page) with the task as a star and its best matches ringed; a task that
    fits nothing is drawn apart, beside the map, not inside a cluster it does not belong to."""
    layout = pools.map_layout(data)
    embedding = layout.embedding
    if result.verdict == "none":
        position, label = apart_from(embedding), "your task (fits no group)"
    else:
        try:
            position = layout.place(result.vector)[0]
        except Exception:  # noqa: BLE001 - a layout without transform: fall back to where the search placed it
            position = result.position
        label = "your task"
    frame = data.frame
    labels = [c for c in frame.columns if c not in ("name", "origin")]
    colour_by = "domain" if "domain" in labels else (labels[0] if labels else None)
    colour = list(frame[colour_by].astype(str)) if colour_by else ["model"] * len(frame)
    side = "top left" if result.verdict == "none" else "top center"      # apart: the label stays inside the chart
    marks = [] if position is None else [charts.Mark(float(position[0]), float(position[1]), label,
                                                     text_position=side)]
    focus = [] if result.verdict == "none" else list(result.matches["name"].head(TO_MERGE))
    fig = charts.map_figure(frame, embedding, colour, colour_by or "", charts.hover_texts(frame, labels),
                            focus=focus, marks=marks, focus_label="closest models")
    st.plotly_chart(fig, key="find_map")
    if result.verdict == "none":
        st.caption("★ = your task, drawn apart: it fits none of the groups on the map.")
    else:
        st.caption("★ = your task, placed among the models by the same map; ringed = the closest models.")


def apart_from(embedding: np.ndarray) -> np.ndarray:
    """A place beside the map's points (right of them, at mid height), for a task that belongs to no group."""
    low, high = embedding.min(axis=0), embedding.max(axis=0)
    span = np.maximum(high - low, 1e-6)
    return np.array([high[0] + 0.15 * span[0], low[1] + 0.5 * span[1]])


main()
