"""Map: every model of the pool as a point; close points changed the base model in the same way."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.map.projection import one_point_note
from pages.parts import charts, jobs, learned, pools, ui

NEIGHBOURS = 8           # closest models listed for a selected model
LAYOUT_WORDS = {"UMAP": "Neighbours", "PCA": "Straight", "t-SNE": "Groups"}  # pools.LAYOUTS in words
COLOUR_GROUPS = "Groups found automatically"
COLOUR_ORIGIN = "Where it came from"
LEANS = "leans towards"          # the hover line of what a model learned (core.map.describe)
CHART_KEY = "map_chart"
SEARCH_KEY = "map_search"
EMBED_JOB = "embed_job"  # the session's (and the URL's) job measuring the pool


def main() -> None:
    pool = ui.page_setup("Map")
    st.title("Map of the models")
    st.caption("Each point is a finetuned model. Models that sit close together changed the base model in the same "
               "way — usually because they learned similar things. Hover a point for its labels, click it (or draw "
               "around several with the lasso or the box at the top right of the map) to see its closest models.")
    with ui.guard("loading the pool"):
        data = pools.pool_data(pool)
        if len(data.frame) == 0:
            missing_vectors(pool, data)
            return
        if data.missing:
            st.info(f"{len(data.missing)} model(s) of this catalog have no vector yet (e.g. {ui.plain(data.missing[0])}); "
                    "they are not on the map. Compute them below the map.")
        draw(pool, data)


def draw(pool: pools.Pool, data: pools.PoolData) -> None:
    frame = data.frame
    labels = [c for c in frame.columns if c not in ("name", "origin")]
    settings = controls(frame, labels, colour_choices(data, labels))
    with st.spinner("Drawing the map (the first time for this pool takes a few seconds)..."):
        embedding = pools.map_embedding(data, settings)
        colour, colour_title, group_note = colouring(pool, data, settings)
    shown = filtered(frame, settings)
    selected = selection(pool, frame)
    chart_col, side_col = st.columns([5, 4], gap="medium")
    found = pools.descriptions(pool)                     # what each model learned: read once per run
    leaning = leaning_column(found, frame)
    hover = frame if leaning is None else frame.assign(**{LEANS: leaning})
    with chart_col:
        fig = charts.map_figure(hover[shown], embedding[shown], list(np.asarray(colour, dtype=object)[shown]),
                                colour_title, focus=selected,
                                hover_columns=labels if leaning is None else [LEANS, *labels])
        st.plotly_chart(fig, key=CHART_KEY, on_select=lambda: on_chart_select(pool),
                        selection_mode=("points", "box", "lasso"),
                        config={"displaylogo": False, "toImageButtonOptions": {"filename": "delta-atlas-map"}})
        st.caption(f"{int(shown.sum()):,} of {len(frame):,} models shown · {group_note}")
        if data.has_mine and not st.session_state.get(pools.REFIT_KEY):
            st.caption("Models added by visitors are placed on this pool's map (the pool's own models keep their "
                       "places); colour by 'where it came from' to see them.")
        quality_notes(data, embedding, settings)
        lineage_notes(data)
    with side_col:
        details(pool, data, selected, labels, found)
    exports(pool, data, fig)


def controls(frame: pd.DataFrame, labels: list[str], choices: tuple[list[str], list[str]]) -> dict:
    """The map's settings; a copy goes to session state so that other pages draw the same map. ``choices``: the
    label columns worth colouring by, then the others (:func:`colour_choices`)."""
    top = st.columns([3, 2, 3])
    settings, n = pools.map_settings(), len(frame)
    has_mine = bool((frame["origin"] == "yours").any())
    settings["layout"] = top[0].radio("How to flatten the map", list(pools.LAYOUTS), horizontal=True,
                                      key="map_layout", index=list(pools.LAYOUTS).index(settings["layout"]),
                                      format_func=lambda name: LAYOUT_WORDS.get(name, name),
                                      help="Keep neighbours together (UMAP, the default) keeps each model near the "
                                           "models most like it; straight (PCA) is the simplest projection, with "
                                           "distances you can compare across the whole map; groups (t-SNE) "
                                           "pulls groups apart.")
    telling, other = choices
    options = [COLOUR_GROUPS, *telling, *([COLOUR_ORIGIN] if has_mine else []), *other]
    default = "domain" if "domain" in labels else COLOUR_GROUPS
    settings["colour"] = top[1].selectbox("Colour by", options, index=options.index(settings.get("colour", default))
                                          if settings.get("colour", default) in options else 0, key="map_colour")
    with top[2].expander("More settings"):
        if settings["colour"] == COLOUR_GROUPS:
            choices = ["auto", *range(2, max(3, min(20, n)))]
            if settings.get("groups", "auto") not in choices:  # chosen for a bigger pool
                settings["groups"] = "auto"
                st.session_state.pop("map_groups", None)
            settings["groups"] = st.select_slider("Number of groups", choices, value=settings.get("groups", "auto"),
                                                  key="map_groups", help="'auto' picks the number that separates "
                                                  "the models best (highest silhouette).")
        settings["neighbours"] = st.select_slider(
            "Neighbourhood size (UMAP)", ["auto", 5, 10, 15, 30, 50, 100], value=settings["neighbours"],
            key="map_neighbours", help="How many neighbours each model keeps close on the map. 'auto' suits the "
                                       "size of the pool (10 to 10,000 models).")
        settings["seed"] = st.number_input("Random seed", 0, 9999, int(settings["seed"]), key="map_seed",
                                           help="The same seed always draws the same map.")
        if has_mine:
            st.toggle("Re-draw the map around the added models too", key=pools.REFIT_KEY,
                      help="The map is drawn from this pool's own models; models added later are placed on it, so "
                           "that nobody's map moves when someone adds a model. This re-draws it from every model, "
                           "for you only.")
        column = st.selectbox("Show only models whose label...", ["(show all)", *labels], key="map_filter_column")
        settings["filter_column"] = None if column == "(show all)" else column
        settings["filter_values"] = []
        if settings["filter_column"]:
            values = sorted(frame[column].astype(str).unique())
            settings["filter_values"] = st.multiselect("...is one of", values, key="map_filter_values")
    st.session_state[pools.MAP_SETTINGS_KEY] = settings
    return settings


def colour_choices(data: pools.PoolData, labels: list[str]) -> tuple[list[str], list[str]]:
    """Label columns worth colouring by first (a few named groups: domain, format, method), then the rest (numbers
    such as a learning rate or a loss, yes/no flags, one value for nearly every model, one value per model). Read
    once per pool: it was 40% of a map page's time (bench/README.md, load test)."""
    return _colour_choices(data.key, data.digest, tuple(labels), data.frame)


@st.cache_data(show_spinner=False, max_entries=32)
def _colour_choices(key: str, digest: str, labels: tuple[str, ...], _frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    telling, other = [], []
    for column in labels:
        values = _frame[column].astype(str).str.strip()
        values = values[values != ""]
        numbers = pd.to_numeric(values, errors="coerce").notna().mean() if len(values) else 1.0
        flag = set(values.str.lower()) <= {"yes", "no", "true", "false"}
        mostly_one = len(values) and values.value_counts(normalize=True).iloc[0] >= 0.9
        (telling if 2 <= values.nunique() <= 20 and numbers < 0.5 and not flag and not mostly_one
         else other).append(column)
    return telling, other


def colouring(pool: pools.Pool, data: pools.PoolData, settings: dict) -> tuple[list[str], str, str]:
    colour = settings["colour"]
    if colour == COLOUR_GROUPS:
        names, k, silhouette = pools.clusters(data, settings.get("groups", "auto"))
        how = "chosen automatically" if settings.get("groups", "auto") == "auto" else "set by you"
        named = pools.group_names(pool, data, names)
        note = " · groups named by the words their models lean towards" if named else ""
        return [f"{g}: {named[g]}" if named.get(g) else g for g in names], "group", \
            f"{k} groups ({how}): the models {ui.words_for_silhouette(silhouette)} (silhouette {silhouette:.2f}){note}"
    if colour == COLOUR_ORIGIN:
        return [{"yours": "added by you"}.get(o, "this pool") for o in data.frame["origin"]], "origin", ""
    values = data.frame[colour].astype(str).replace("", "(none)")
    return values.tolist(), colour, f"coloured by {colour}"


def filtered(frame: pd.DataFrame, settings: dict) -> np.ndarray:
    column, values = settings.get("filter_column"), settings.get("filter_values")
    if not column or not values:
        return np.ones(len(frame), dtype=bool)
    return frame[column].astype(str).isin(values).to_numpy()


# ---- selection: the chart, the search box, and the shared state they both write --------------------------------

def on_chart_select(pool: pools.Pool) -> None:
    names = ui.names_from_event(st.session_state.get(CHART_KEY))
    if names:
        ui.remember(ui.SELECTION_KEY, pool, names=names)


def on_search(pool: pools.Pool) -> None:
    name = st.session_state.get(SEARCH_KEY)
    if name:
        ui.remember(ui.SELECTION_KEY, pool, names=[name])


def selection(pool: pools.Pool, frame: pd.DataFrame) -> list[str]:
    known = set(frame["name"])
    remembered = ui.remembered(ui.SELECTION_KEY, pool)
    return [n for n in (remembered or {}).get("names", []) if n in known]


def details(pool: pools.Pool, data: pools.PoolData, selected: list[str], labels: list[str], found: dict) -> None:
    names = data.frame["name"].tolist()
    st.selectbox("Find a model by name", names, index=None, key=SEARCH_KEY, placeholder="Type a name...",
                 on_change=on_search, args=(pool,))
    if not selected:
        st.info("Click a point on the map, or pick a name above, to see the model's closest relatives.")
        return
    if len(selected) == 1:
        one_model(pool, data, selected[0], labels, found)
    else:
        many_models(pool, data, selected, labels, found)
    if st.button("Clear the selection", key="map_clear"):
        st.session_state.pop(ui.SELECTION_KEY, None)
        st.rerun()


def one_model(pool: pools.Pool, data: pools.PoolData, name: str, labels: list[str], found: dict) -> None:
    from core.map.geometry import nearest_neighbours

    frame = data.frame
    index = int(np.flatnonzero(frame["name"].to_numpy() == name)[0])
    row = frame.iloc[index]
    st.subheader(ui.plain(name))
    facts = {c: row[c] for c in labels if str(row[c])}
    if row["origin"] == "yours":
        facts["origin"] = "added by you"
    st.dataframe(pd.DataFrame({"label": list(facts), "value": list(facts.values())}), hide_index=True,
                 width="stretch")
    learned.learned(found, name)
    k = min(NEIGHBOURS, len(frame) - 1)
    pairs = nearest_neighbours(data.X, index, k)
    near = frame.iloc[[i for i, _ in pairs]][["name", *labels[:1]]].copy()   # fits the side column: one label
    near.insert(1, "similarity", [float(s) for _, s in pairs])
    st.markdown("**Closest models** — measured on each model's full description (its Delta Activation), not on the "
                "map (1 = changed the base in exactly the same way, 0 = unrelated).")
    st.dataframe(near, hide_index=True, width="stretch", column_config={  # fits the side column: no bars
        "name": st.column_config.TextColumn("name", width=180),
        "similarity": st.column_config.NumberColumn("similarity", format="%.2f", width=75),
        **{label: st.column_config.TextColumn(label, width=105) for label in labels[:1]}})
    compare_with(found, name, [*near["name"], *(n for n in frame["name"] if n != name)])
    if st.button(f"Merge {ui.plain(name)} with its 2 closest models", key="map_to_merge"):
        ui.remember(ui.CANDIDATES_KEY, pool, names=[name, *list(near["name"])[:2]],
                    why=f"{name} and its two closest models on the map")
        st.success("Ready on the Merge page.")
        ui.link("pages/merge.py", "Open the Merge page")


def compare_with(found: dict, name: str, others: list[str]) -> None:
    """Pick a second model (its closest first) and read what the two say side by side."""
    if not found.get("models"):
        return
    other = st.selectbox("Compare what it says with another model", list(dict.fromkeys(others)), index=None,
                         key="map_compare", placeholder="Choose a model (the closest are first)")
    if other is not None:
        learned.side_by_side(found, name, other)


def leaning_column(found: dict, frame: pd.DataFrame) -> list[str] | None:
    """The first words each model leans towards, for the map's hover text (None when the pool is not described)."""
    models = found.get("models", {})
    if not models:
        return None
    return [", ".join((models.get(n, {}).get("words") or [])[:4]) for n in frame["name"]]


def many_models(pool: pools.Pool, data: pools.PoolData, selected: list[str], labels: list[str], found: dict) -> None:
    frame = data.frame
    chosen = frame[frame["name"].isin(selected)]
    st.subheader(f"{len(chosen):,} models selected")
    if labels:
        column = "domain" if "domain" in labels else labels[0]
        counts = chosen[column].astype(str).replace("", "(none)").value_counts()
        st.caption(f"By {ui.plain(column)}: " + ", ".join(f"{v} × {ui.plain(k)}" for k, v in counts.items()))
    st.dataframe(chosen[["name", *labels[:4]]], hide_index=True, width="stretch", height=260)
    if len(chosen) == 2 and found.get("models"):
        learned.side_by_side(found, *chosen["name"])
    if st.button(f"Use these {len(chosen):,} models on the Merge page", key="map_many_to_merge"):
        ui.remember(ui.CANDIDATES_KEY, pool, names=list(chosen["name"]), why="your selection on the map")
        st.success("Ready on the Merge page.")
        ui.link("pages/merge.py", "Open the Merge page")


# ---- plain-words quality, exports, missing vectors -------------------------------------------------------------

def quality_notes(data: pools.PoolData, embedding: np.ndarray, settings: dict) -> None:
    if note := one_point_note(data.X):             # nothing to measure: say why the map is one dot
        st.info(note)
        return
    if len(data.X) < 4:
        return
    with st.expander("How faithful is this map?", expanded=False):
        _, words = pools.quality(data, embedding, settings)
        st.markdown(words)
        lines = []
        for column in [c for c in data.frame.columns if c not in ("name", "origin")]:
            value = pools.label_silhouette(data, column)
            if value is not None:
                lines.append(f"- Models with the same **{ui.plain(column)}** {ui.words_for_silhouette(value)} "
                             f"(silhouette {value:.2f}).")
        if lines:
            st.markdown("How well the labels group the models, in the full vectors (silhouette: 1 = perfectly "
                        "separate groups, 0 = no grouping):\n" + "\n".join(lines))


def lineage_notes(data: pools.PoolData) -> None:
    """Declared datasets beside behaviour: the models whose card names another dataset than their neighbours do."""
    check = pools.lineage_check(data)
    if check is None:
        return
    column, k, odd = check
    with st.expander("Models whose declared dataset disagrees with their neighbours", expanded=False):
        st.markdown(f"Each model's **{ui.plain(column)}**, as its catalog declares it, next to what its {k} closest models "
                    "(by Delta Activations) declare. A model listed here behaves like models trained on something "
                    "else: its card may be wrong, it may have learned more than it says, or two datasets teach "
                    "much the same thing.")
        if not len(odd):
            st.success(f"Every model's declared {ui.plain(column)} is also what most of its {k} closest models "
                       "declare.")
            return
        shown = odd.assign(agreement=[f"{round(a * k)} of {k}" for a in odd["agreement"]])
        st.dataframe(shown, hide_index=True, width="stretch", column_config={
            "declared": st.column_config.TextColumn(f"declared {column}"),
            "neighbours_say": st.column_config.TextColumn("its closest models say"),
            "agreement": st.column_config.TextColumn(
                "closest models that agree", help=f"How many of its {k} closest models declare the same {column}.")})


def exports(pool: pools.Pool, data: pools.PoolData, fig) -> None:
    with st.expander("Download the vectors or the map"):
        stem = pool.catalog_path.parent.name if pool.catalog_path.stem == "catalog" else pool.catalog_path.stem
        cols = st.columns(3)
        cols[0].download_button("Vectors (CSV)", data=lambda: vector_bytes(data, ".csv"), file_name=f"{stem}-vectors.csv",
                                mime="text/csv", on_click="ignore", key="dl_csv")
        cols[1].download_button("Vectors (Parquet)", data=lambda: vector_bytes(data, ".parquet"),
                                file_name=f"{stem}-vectors.parquet", mime="application/octet-stream",
                                on_click="ignore", key="dl_parquet")
        cols[2].download_button("Map (interactive HTML)", data=lambda: fig.to_html(include_plotlyjs=True),
                                file_name=f"{stem}-map.html", mime="text/html", on_click="ignore", key="dl_html")
        if png_export_available():
            st.download_button("Map (PNG picture)", data=lambda: fig.to_image(format="png", width=1400, height=900),
                               file_name=f"{stem}-map.png", mime="image/png", on_click="ignore", key="dl_png")
        st.caption("You can also save the map as a PNG picture with the camera button that appears at the top right "
                   "of the map when you hover it (it keeps your zoom).")


def png_export_available() -> bool:
    """Plotly writes PNG files through kaleido, which drives a Chrome or Chromium installed on the server."""
    import importlib.util
    import shutil

    return importlib.util.find_spec("kaleido") is not None and any(
        shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome"))


def vector_bytes(data: pools.PoolData, suffix: str) -> bytes:
    from core.pool.vectors import write_vectors

    with tempfile.TemporaryDirectory() as tmp:
        path = write_vectors(data.table, Path(tmp) / f"vectors{suffix}")
        return path.read_bytes()


def missing_vectors(pool: pools.Pool, data: pools.PoolData) -> None:
    needs = pools.hub_needs(pool, data)
    if needs:  # models on the Hub (the paper's pools...): a job for a GPU machine, not for this page
        hub_pool(pool, data, needs)
        return
    st.info(f"The models of **{pool.title}** have no vectors yet, so there is nothing to draw. Compute them here "
            f"(this runs every model once; it can take long for big models), or on the command line with "
            f"`{embed_command(pool)}`.")
    if st.button("Compute the vectors now", type="primary", key="map_embed"):
        embed_pool(pool, data)
    embedded(pool)


def hub_pool(pool: pools.Pool, data: pools.PoolData, needs: str) -> None:
    """A pool of Hugging Face models without vectors: what it is, what measuring it takes, and the one command."""
    n = len(data.missing)
    st.info(f"**{pool.title}** lists {n} model{'s' if n != 1 else ''} finetuned from **{data.base}**. They "
            f"live on the Hugging Face Hub and have no vectors yet, so there is nothing to draw. Measuring them "
            f"needs {needs}: each model is downloaded and run once (log in with `hf auth login` first when "
            f"the base is gated). On such a machine, run\n\n```\n{embed_command(pool, lines=True)}\n```\n\n"
            "then reload this page to see the map.", icon=":material/cloud_download:")
    size = pools.base_size_words(data.base)
    st.markdown("**How long it takes.** " + (f"The base model is {size}: downloading it once is most of the wait. "
                                             if size else "Downloading the base model once is most of the wait. ")
                + "Then each model is a small download and about a second of work on one GPU (five short "
                  "questions). This is an estimate from the models' size: this server has no GPU to time it on.")
    catalog = pools.catalog_of(pool)
    rows = [{"model": e.name, "on the Hub": str(e.source), **{k: v for k, v in e.labels.items() if k != "needs"}}
            for e in catalog if str(e.base) == data.base]
    st.markdown(f"**The {len(rows)} models of this pool**, as its catalog describes them:")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def embed_command(pool: pools.Pool, lines: bool = False) -> str:
    """The command that computes this pool's vectors where the app looks for them (paths relative to the project
    when they lie inside it), on one line or, for a code block, on three."""
    def shown(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(pools.ROOT))
        except ValueError:
            return str(path)

    gap = " \\\n    " if lines else " "
    return f"python -m core embed{gap}--catalog {shown(pool.catalog_path)}{gap}--out {shown(pool.vectors_path)}"


def embed_pool(pool: pools.Pool, data: pools.PoolData) -> None:
    """Queue the measuring of every model of the pool (the vectors are written beside its catalog)."""
    from core.engine.embed import embed_catalog
    from core.pool.vectors import write_vectors

    catalog, models = pools.catalog_of(pool), jobs.shared_models()

    def work(progress):
        result = embed_catalog(catalog, progress=progress, models=models)
        if len(result.table):
            write_vectors(result.table, pool.vectors_path, metadata=getattr(result, "metadata", None))
        return result

    jobs.start_job(EMBED_JOB, data.base, "embed", work, pool)


def embedded(pool: pools.Pool) -> None:
    """Once the pool is measured: say what failed, and draw the map."""
    job = jobs.finished_job(EMBED_JOB, once=True)
    if job is None:
        return
    for failure in job.result.failures:
        st.warning(ui.plain(f"{failure.name}: {failure.reason}"))
    if len(job.result.table):
        st.rerun()


main()
