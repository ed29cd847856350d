"""How it works: the method in plain words and pictures, and the evidence measured on the demo zoo."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.pool.folder import RECIPE_FILE, REPORT_FILE, SEARCH_QUALITY_FILE, quality_key
from pages.parts import charts, learned, pools, ui

PAPER = pd.DataFrame({  # the paper's Table (silhouette of the domain labels, 15 LoRA models per base)
    "embedding": ["flattened adapter weights", "salient mask", "output sentence embeddings", "Delta Activations"],
    "Llama-3.1-8B": [-0.035, 0.133, 0.221, 0.645], "Gemma-2-9B": [-0.060, 0.208, -0.053, 0.545],
    "Qwen-2.5-7B": [-0.034, 0.229, 0.096, 0.653], "average": [-0.043, 0.190, 0.087, 0.614]})


@st.cache_data(show_spinner=False)
def load_report(path: str, mtime: int) -> dict:
    return json.loads(Path(path).read_text())


@st.cache_data(show_spinner=False)
def quick_report(catalog: str, vectors: str, mtimes: tuple) -> dict:
    """The report of a pool without the baselines (those need every model's weights): seconds, not minutes."""
    from core.map.report import build_report

    return build_report(catalog, vectors, baselines=False)


def pool_report(pool: pools.Pool) -> tuple[dict | None, str]:
    """The report shipped beside the pool's catalog, else one measured now on the chosen pool (when it has domains)."""
    shipped = pool.catalog_path.parent / REPORT_FILE
    if shipped.is_file():
        return load_report(str(shipped), pools.stamp(shipped)), f"{pool.title} (from {shipped.parent.name}/{REPORT_FILE})"
    catalog = pools.catalog_of(pool)
    if "domain" not in catalog.label_columns or not pool.vectors_path.is_file():
        return None, ""
    mtimes = (pools.stamp(pool.catalog_path), pools.stamp(pool.vectors_path))
    return quick_report(str(pool.catalog_path), str(pool.vectors_path), mtimes), \
        f"{pool.title}, measured now (run `python -m core report` for the baselines too)"


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
    with ui.guard("reading what the models learned"):
        in_words(pool)
    with ui.guard("drawing the demo zoo's directions"):
        directions(pool)
    with ui.guard("reading the report"):
        report, where = pool_report(pool)
        st.subheader("4. Does it work? Models that learned the same thing end up together")
        clustering(report, where)
        if report and report.get("additivity"):
            additivity(pool, report)
        if report and report.get("robustness"):
            robustness(report)
    if (pool.catalog_path.parent / SEARCH_QUALITY_FILE).is_file():
        with ui.guard("describing the demo zoo"):
            demo_zoo(pool)


def in_words(pool: pools.Pool) -> None:
    """What one model of the pool learned, in words: a list of numbers means nothing to a person."""
    found = pools.descriptions(pool)
    described = [n for n, about in found.get("models", {}).items() if about.get("answers")]
    if not described:
        return
    st.subheader("2. What a model learned, in its own words")
    st.markdown(
        "A list of numbers means nothing to a person, so the app also reads every model in words, without looking "
        "at its name or labels. It writes down **what the model answers** to the same five plain questions, beside "
        "what the base model answered; and it reads **which words the model's change pushes up** — the words the "
        "finetuned model is now more ready to say than the other models. A maths model leans towards numbers, a "
        "legal one towards clauses and courts. The Map page shows these for every model, and names each group of "
        "the map after the words its models share.")
    talkative = sorted(described, key=lambda n: -len(set(" ".join(found["models"][n]["answers"]).split())))
    name = st.selectbox("See a model", talkative, key="how_model", help="The models that say the most come first.")
    learned.learned(found, name)


def directions(pool: pools.Pool) -> None:
    """Each domain's mean vector in this pool, flattened to 2-D: same direction = same kind of change."""
    data = pools.pool_data(pool)
    if len(data.frame) < 3 or "domain" not in data.frame.columns:
        return
    domains = data.frame["domain"].astype(str)
    single = [d for d in sorted(set(domains)) if d and "+" not in d]   # mixtures name two domains: left out
    if len(single) < 2:
        return
    means = {d: data.X[(domains == d).to_numpy()].mean(0) for d in single}
    M = np.stack(list(means.values()))                                   # [domains, d]
    centred = M - M.mean(0)                                              # from the pool's average model
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    flat = centred @ vt[:2].T                                            # [domains, 2]
    flat /= np.abs(flat).max()
    st.subheader("3. On this pool: one arrow per domain")
    left, right = st.columns([3, 2])
    left.plotly_chart(charts.arrows_figure({d: tuple(p) for d, p in zip(means, flat)}), key="how_arrows",
                      config={"staticPlot": True})
    right.markdown(f"Each arrow goes from the average model of **{pool.title}** to the average of one domain's "
                   "models, drawn flat. Arrows that point apart mean the domains changed the base in different "
                   "ways — which is why the map can tell them apart without being told the labels.")


def clustering(report: dict | None, where: str) -> None:
    if report is None:
        st.markdown("If the idea works, models trained on the same kind of data should come out close together. "
                    "This pool has no report yet (`python -m core report` measures it); in the paper, on real "
                    "8-billion-parameter models, Delta Activations group the models by domain far better than the "
                    "other ways of describing a model:")
        with st.expander("The paper's numbers"):
            st.caption(SILHOUETTE)
            st.dataframe(PAPER, hide_index=True, width="stretch")
        return
    ours = next((e for e in report["embeddings"] if e["key"] == "delta_activations"), None)
    if ours is not None:
        st.markdown(plain_grouping(report, ours))
    with st.expander("The numbers: how tight the groups are, and how each other way of describing a model does"):
        st.caption(SILHOUETTE)
        st.caption(f"Measured on {where}: {report['n_models']} models, grouped by {report['label']}.")
        st.dataframe(grouping_table(report), hide_index=True, width="stretch", column_config={
            "nearest neighbour, all": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0,
                                                                      format="percent")})
        for note in report.get("notes", []):
            st.caption(note)


SILHOUETTE = ("The silhouette score measures, from −1 to 1, how well the labels group the models: near 1, each "
              "group is tight and apart from the others; near 0, the groups are mixed. Nearest neighbour is the "
              "share of models whose most similar other model has the same label.")


def plain_grouping(report: dict, ours: dict) -> str:
    """The grouping result in one or two sentences a non-programmer can follow."""
    label, scopes = report["label"], report["scopes"]
    text = ("If the idea works, models trained on the same kind of data should come out close together — without "
            f"being told their {label}. On **{report['n_models']} models** of this pool, ")
    share = ours["loo_accuracy"].get("all")
    if share is not None:
        text += (f"for **{share:.0%}** of them the most similar other model learned the same {label}")
    score, scope = next(((ours["silhouette"].get(k), k) for k in ("primary", "all")
                         if ours["silhouette"].get(k) is not None), (None, None))
    if score is not None:
        others = [e for e in report["embeddings"] if e is not ours and e["silhouette"].get(scope) is not None]
        tight = "clearly separate" if score > 0.5 else "mostly separate" if score > 0.25 else "overlapping"
        text += (f"; on the {scopes[scope]['n']} main models the {label} groups are **{tight}** (a score of "
                 f"{score:.2f}, where 1 is perfectly apart and 0 all mixed")
        if others:
            best = max(others, key=lambda e: e["silhouette"][scope])
            text += f", against {best['silhouette'][scope]:.2f} for the best other way of describing a model"
        text += ")"
    return text + "."


def grouping_table(report: dict) -> pd.DataFrame:
    scopes = report["scopes"]
    rows = [{"embedding": e["name"], "numbers per model": f"{e['dim']:,}",
             f"silhouette, primary ({scopes['primary']['n']})": e["silhouette"].get("primary"),
             f"silhouette, all ({scopes['all']['n']})": e["silhouette"].get("all"),
             "nearest neighbour, all": e["loo_accuracy"].get("all"),
             "paper's silhouette": report["paper_silhouette"].get(e["name"])} for e in report["embeddings"]]
    return pd.DataFrame(rows).dropna(axis=1, how="all")  # a scope the pool lacks (no primary models...)


def additivity(pool: pools.Pool, report: dict) -> None:
    st.subheader("5. Training on A and B lands near A + B")
    first, mixes = report["additivity"][0], report["additivity"]
    nearest = sum(a["rank_of_sum"] == 1 for a in mixes)
    st.markdown("Some models of the demo zoo were trained on two kinds of data at once (say maths **and** code). "
                "If the method is sound, such a model should have changed the base roughly as much as the maths "
                "model and the code model together. It does: for "
                f"**{nearest} of the {len(mixes)}** models trained on two kinds of data, the sum of the two "
                "single-kind models is closer to it than any model of the pool.")
    with st.expander("The numbers: each model trained on two kinds of data"):
        st.caption("Similarity goes from −1 to 1 (1 = the same change). Rank 1 = A + B is closer than any single "
                   "model of the pool.")
        rows = [{"model trained on both": a["name"], "A": a["parts"][0], "B": a["parts"][1],
                 "similarity to A + B": a["cos_sum"], "to A": a["cos_a"], "to B": a["cos_b"],
                 "rank of A + B": f"{a['rank_of_sum']} of {a['n_compared']}"} for a in mixes]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
            "similarity to A + B": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="%.2f")})
        st.caption(f"On average a mixture model's similarity to A + B is "
                   f"{np.mean([a['cos_sum'] for a in mixes]):.2f}, against "
                   f"{np.mean([a['mean_cos_others'] for a in mixes]):.2f} to the other models of the pool.")
    data = pools.pool_data(pool)
    index = {n: i for i, n in enumerate(data.frame["name"])}
    if all(n in index for n in [first["name"], *first["parts"]]):
        a, b, mix = (data.X[index[n]] for n in [*first["parts"], first["name"]])
        basis, _ = np.linalg.qr(np.stack([a, b]).T)           # a flat picture of the plane of A and B
        flat = {n: tuple(basis.T @ v) for n, v in zip(["A", "B", "trained on both"], (a, b, mix))}
        scale = max(abs(c) for p in flat.values() for c in p)
        flat = {n: (x / scale, y / scale) for n, (x, y) in flat.items()}
        total = tuple(np.add(flat["A"], flat["B"]))
        left, right = st.columns([3, 2])
        left.plotly_chart(charts.arrows_figure(flat, {"A + B": total}), key="how_additive",
                          config={"staticPlot": True})
        right.markdown(f"The vectors of **{first['parts'][0]}** (A), **{first['parts'][1]}** (B) and "
                       f"**{first['name']}** (trained on both), drawn in the plane of A and B; ✕ marks A + B. "
                       f"The arrow of the model trained on both points towards A + B (similarity "
                       f"{first['cos_sum']:.2f}).")


def robustness(report: dict) -> None:
    label = report["label"]
    st.subheader("6. Other training settings, same place")
    same = sum(bool(r["same_" + label]) for r in report["robustness"])
    st.markdown(f"Other models were trained on the same data in other ways — faster or slower, on less data, or "
                f"changing every weight of the model instead of a small add-on. What they learned is the same, so "
                f"they should land in the same place. **{same} of {len(report['robustness'])}** sit right next to "
                f"a model of their own {label}.")
    with st.expander("The numbers: each model trained another way, and its closest model"):
        rows = [{"model": r["name"], "setting": r["setting"], f"its {label}": r[label],
                 "closest model": r["nearest"], "similarity": r["nearest_cos"],
                 f"same {label}": "yes" if r["same_" + label] else "no"} for r in report["robustness"]]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def base_description(base: str) -> str:
    """A built-in base's own line, or the figures of a base pretrained here (its pretraining.json)."""
    from core.engine.bases import BUILTINS, is_builtin

    name = base.split(":", 1)[-1]
    if is_builtin(base) and name in BUILTINS:
        return BUILTINS[name].about
    figures = Path(base) / "pretraining.json"
    if figures.is_file():
        f = json.loads(figures.read_text())
        return (f"a {f['parameters'] / 1e6:.1f}M-parameter model pretrained from scratch here on "
                f"{f['train_tokens'] / 1e6:.1f}M tokens of general English text")
    return Path(base).name or base


def training_words(pool: pools.Pool) -> str:
    """How the pool's models learned (its recipe.json), with the two ways measured side by side when a
    comparison was run (search_quality.json, "loss_on")."""
    from core.errors import DeltaAtlasError
    from core.reuse.task import pool_recipe

    folder = pool.catalog_path.parent
    if not (folder / RECIPE_FILE).is_file():             # no recipe: nothing to say (and no "default recipe" warning)
        return ""
    try:
        recipe = pool_recipe(pool.catalog_path)
    except DeltaAtlasError:
        return ""
    if recipe.loss_on != "text":
        return ("Each model learned from the answers of its examples only, as in the paper; a task you search "
                "with is learned the same way.")
    words = ("Each model learned from the **whole of each example** — the instruction and its input as well as the "
             "answer — where the paper's models learn from the answers only, so that a model takes in what its "
             "data is about, not only how it answers; a task you search with is learned the same way.")
    path = folder / SEARCH_QUALITY_FILE
    compared = load_report(str(path), pools.stamp(path)).get("loss_on") if path.is_file() else None
    if isinstance(compared, dict) and {"text", "response", "about"} <= set(compared):
        words += (f" Measured on {compared['about']}: the best match was in the right domain for "
                  f"**{compared['text']}** this way, against {compared['response']} learning from the answers only.")
    return words


def demo_zoo(pool: pools.Pool) -> None:
    """What the demo zoo is made of, and how well task search does on it (measured by bench/eval_find.py)."""
    st.subheader("7. The demo zoo, and how well task search does on it")
    frame = pools.catalog_of(pool).labels_frame()
    base = str(next(iter(pools.catalog_of(pool))).base)
    kinds = sorted({d for d in frame.get("domain", pd.Series(dtype=str)).astype(str) if d and "+" not in d})
    st.markdown(f"**{pool.title}** holds **{len(frame)} small models**, each taught one kind of data here"
                + (f" ({', '.join(kinds)})" if kinds else "") + ", all from the same base model.")
    path = pool.catalog_path.parent / SEARCH_QUALITY_FILE
    quality = load_report(str(path), pools.stamp(path)) if path.is_file() else {}
    if plain := plain_search(quality):
        st.markdown(plain)
    with st.expander("How the zoo was made, and every figure of task search"):
        zoo_details(pool, frame, base)
        lines = search_quality_lines(quality)
        if lines:
            st.markdown("Task search, measured (`bench/eval_find.py`, `bench/sample_merge.py`):\n" + "\n".join(lines))


def plain_search(quality: dict) -> str:
    """How well task search does, in one sentence (the default comparison on tasks nobody tuned to)."""
    default = quality.get("default_compare", "delta")
    ours = quality.get(quality_key("ood", default))
    off = quality.get("off")
    if not isinstance(ours, dict):
        return ""
    text = (f"When you bring your own task (the Find page): on **{ours['tasks']} tasks written by hand** that no "
            f"setting was tuned to, a model of the right kind came first for **{ours['top1']}**")
    if isinstance(off, dict):
        text += (f"; on **{off['tasks']} tasks of kinds the zoo does not hold** (poems, jokes, finance...), the app "
                 f"said *nothing in this pool fits your task* for **{off['flagged']}**")
        if missed := _missed(off["flagged"]):
            text += f" ({missed} got a *weak match*: read the verdict, not only the ranking)"
        if ours.get("in_flagged"):
            text += f", and said it wrongly for **{ours['in_flagged']}** of the tasks it does hold"
        if isinstance(fresh := quality.get("off_fresh"), dict):
            text += (f". On **{fresh['tasks']} more such tasks written later**, it said so for only "
                     f"**{fresh['flagged']}**")
    return text + "."


def _missed(share: str) -> str:
    """ "12/13" -> "the other one"; "7/13" -> "the other 6"; "" when every task was caught (or the text is odd)."""
    try:
        caught, total = (int(x) for x in str(share).split("/"))
    except ValueError:
        return ""
    rest = total - caught
    return "" if rest <= 0 else ("the other one" if rest == 1 else f"the other {rest}")


def zoo_details(pool: pools.Pool, frame: pd.DataFrame, base: str) -> None:
    """The base, the datasets and their answer forms, and how much each domain's models learned."""
    st.markdown(f"All {len(frame)} models are finetuned from one base: {base_description(base)}. "
                "Each was trained here on one public dataset (or two, for the mixtures). Every domain has datasets "
                "that answer in different forms — a one-word label, a letter, a number, prose, code — so that the "
                "map shows whether models group by topic or by the form of their answers. On a base this small, the "
                "form still often wins: models of one dataset sit together, but datasets of one domain that answer "
                "differently can sit apart.")
    training = training_words(pool)
    if training:
        st.markdown(training)
    if {"domain", "dataset", "format"} <= set(frame.columns):
        single = frame[~frame["domain"].astype(str).str.contains("+", regex=False)]
        loss = pd.to_numeric(single.get("held_out_loss"), errors="coerce")
        base_loss = pd.to_numeric(single.get("base_held_out_loss"), errors="coerce")
        rows = [{"domain": d, "models": len(g), "datasets": ", ".join(dict.fromkeys(g["dataset"])),
                 "answer forms": ", ".join(dict.fromkeys(g["format"])),
                 "loss: base → finetuned": f"{base_loss[g.index].mean():.2f} → {loss[g.index].mean():.2f}"}
                for d, g in single.groupby("domain", sort=True)]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
            "datasets": st.column_config.TextColumn(width="medium"),
            "answer forms": st.column_config.TextColumn(width="medium")})
        st.caption("Loss on unseen examples: how surprised the model is by the right answers of examples of its own "
                   "dataset that it never trained on (lower is better); the drop shows each model learned its data.")


def compared_by(compare: str, titles: dict[str, str]) -> str:
    """ "by the domain lens": a comparison's name for people (core's COMPARISON_TITLES), in a sentence."""
    title = titles.get(compare, compare)
    return "by " + title[:1].lower() + title[1:]


def search_quality_lines(quality: dict) -> list[str]:
    """The measured figures of search_quality.json in sentences: the default comparison first, then the others."""
    from core.reuse.task import COMPARISON_TITLES  # imports torch (through core.reuse.train): only for this section

    default = quality.get("default_compare", "delta")
    lines = []
    for which, what in (("ood", "tasks written by hand for this project (never used to choose a setting)"),
                        ("fresh", "more tasks written by hand after every setting was fixed"),
                        ("held_out", "tasks cut from unseen rows of the training datasets")):
        q = quality.get(quality_key(which, default))
        if not isinstance(q, dict):
            continue
        lines.append(f"- On **{q['tasks']} {what}**, compared {compared_by(default, COMPARISON_TITLES)} (the default): "
                     f"the best match was of the right domain for **{q['top1']}**; *nothing fits* was said wrongly "
                     f"for {q['in_flagged']}.")
        others = [f"{compared_by(c, COMPARISON_TITLES)} {quality[quality_key(which, c)]['top1']}"
                  for c in COMPARISON_TITLES if c != default and isinstance(quality.get(quality_key(which, c)), dict)]
        if others:
            lines.append("  - Right domain first " + "; ".join(others) + ".")
    if isinstance(quality.get("off"), dict):
        q = quality["off"]
        lines.append(f"- On **{q['tasks']} tasks outside the five domains** (poems, jokes, finance, translation...): "
                     f"*nothing in this pool fits* was said for **{q['flagged']}**.")
    if isinstance(quality.get("off_fresh"), dict):
        q = quality["off_fresh"]
        lines.append(f"- On **{q['tasks']} more tasks outside the five domains, written after every setting was fixed** "
                     f"(astronomy, capitals, film plots...): *nothing in this pool fits* was said for **{q['flagged']}**; "
                     "short questions with short answers often read like the everyday questions this zoo was "
                     "trained on, so they get a *weak* or even *strong match*.")
    verdicts = quality.get("ood_verdicts")
    if isinstance(verdicts, dict) and {"in", "off"} <= set(verdicts):
        lines.append(f"- *Strong match* (close, and a model lowers the error on the examples) was said for "
                     f"{verdicts['in'].get('strong', 0)} of the in-domain tasks written by hand and for "
                     f"**{verdicts['off'].get('strong', 0)}** of the tasks outside the five domains.")
    checked = quality.get("help_check")
    if isinstance(checked, dict) and "ood_held" in checked:
        lines.append(f"- Is *helps* true? Each task's examples were split in two at random ({checked['splits']} times); "
                     f"where a model helped on one half, it also lowered the error on the other half "
                     f"**{100 * checked['ood_held']:.0f}%** of the time on the tasks written by hand "
                     f"({100 * checked['dev_held']:.0f}% on the tasks used to choose settings).")
    merges = quality.get("sample_merge")
    if isinstance(merges, dict):
        lines.append(f"- The {merges['tasks']} sample tasks, Find then Merge as offered: a merge was offered for "
                     f"{merges['offered']}, and the merged model beat the base on {merges['beats_base']} of those; "
                     f"for the others the page said that fewer than two models help.")
    return lines

main()
