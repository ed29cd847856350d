"""Add models: the user's own adapters or finetuned models join a catalog kept on disk, and the map."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import streamlit as st

from core.errors import DeltaAtlasError
from core.pool import userpool
from pages.parts import jobs, pools, ui

FOLDER, ZIP, HUB = "A folder on this server", "Upload a zip", "Hugging Face Hub id"
ADD_JOB = "add_job"  # the session's (and the URL's) job measuring a model being added
KINDS = {"auto": "find out by itself", "lora": "LoRA adapter", "full": "full finetuned model"}

log = logging.getLogger("delta_atlas.app")


def main() -> None:
    pool = ui.page_setup("Add models")
    st.title("Add your own models")
    users = pools.user_pool()
    st.caption("Add finetuned models of the same base model as this pool. Each one is measured once (how it "
               "changed the base) and read (what it answers): on the demo zoo 3 to 6 seconds, or about 40 for the "
               "first model after the server starts, which loads the base model (bench/README.md). It then joins "
               "**your models**: they appear on the map as diamonds, in task searches, and can be merged. They are "
               f"kept on this server, in `{users.root}`.")
    with ui.guard("adding the model"):
        if pool.is_user:
            st.info("You are looking at your own models. To add more, first choose in the sidebar the pool they "
                    "belong with (their base model must be that pool's).")
        else:
            data = pools.pool_data(pool)
            st.markdown(f"Models must be finetuned from this pool's base: `{data.base}`.")
            add_form(pool, data, users)
            added(pool)
    your_models(users)


def add_form(pool: pools.Pool, data: pools.PoolData, users: userpool.UserPool) -> None:
    how = st.radio("Where is the model?", [FOLDER, ZIP, HUB], horizontal=True, key="add_how")
    if how == FOLDER:
        where = st.text_input("Folder", key="add_folder", placeholder="/path/to/my-adapter",
                              help="The folder that save_pretrained wrote (adapter_config.json or config.json, "
                                   "and .safetensors weights).")
        roots = ", ".join(f"`{r}`" for r in users.roots)
        st.caption(f"For safety this server only reads folders under: {roots}. An admin can allow more with the "
                   f"environment variable `{userpool.ALLOWED_ROOTS_ENV}`.")
    elif how == ZIP:
        where = st.file_uploader("Zip of the model folder", type=["zip"], key="add_zip")
        st.caption(f"Up to {userpool.MAX_ZIP_BYTES // 2**20} MB, {userpool.MAX_FILES} files; weights as "
                   ".safetensors only (pickle .bin files can run code, so they are refused).")
    else:
        where = st.text_input("Hub id", key="add_hub", placeholder="organisation/model-name",
                              help="Needs internet access on the server; optionally @revision.")
    left, mid, right = st.columns(3)
    name = left.text_input("Name (optional)", key="add_name", help="Defaults to the folder, file or hub name.")
    kind = mid.selectbox("Kind", list(KINDS), format_func=lambda k: f"{k} — {KINDS[k]}", key="add_kind")
    domains = sorted(v for v in data.frame.get("domain", pd.Series(dtype=str)).unique() if v)
    domain = right.text_input("Domain (optional)", key="add_domain",
                              help="A label to colour the map by" + (f", e.g. {', '.join(domains[:5])}." if domains else "."))
    note = st.text_input("Note (optional)", key="add_note")
    if st.button("Add and measure", type="primary", key="add_go"):  # never disabled: typing then clicking must work
        if not where:
            st.warning({FOLDER: "Type the model's folder first.", ZIP: "Choose a zip file first.",
                        HUB: "Type the model's hub id first."}[how])
            return
        labels = {k: v.strip() for k, v in {"domain": domain, "note": note}.items() if v.strip()}
        add(pool, data, users, how, where, name.strip() or None, kind, labels)


def add(pool, data, users, how, where, name, kind, labels) -> None:
    """Queue the measuring of the model on the pool's base; :func:`added` shows the outcome."""
    with ui.guard("adding the model"):
        if how == ZIP and not name:
            name = userpool.safe_name(Path(where.name).stem)
        pool_names = set(pools.catalog_of(pool).names)
        if name in pool_names:
            raise DeltaAtlasError(f"The pool already has a model called {name!r}: choose another name.")
        models = jobs.shared_models()
        common = dict(base=data.base, name=name, kind=kind, labels=labels, models=models)
        if how == FOLDER:
            adder, what = users.add_local, where.strip()
        elif how == ZIP:
            adder, what = users.add_zip, where.getvalue()
        else:
            adder, what = users.add_hub, where.strip()

        def add_one(progress):
            table = adder(what, progress=progress, **common)
            describe_added(users, table, progress, models)
            return table

        jobs.start_job(ADD_JOB, data.base, "embed", add_one, pool)


def describe_added(users: userpool.UserPool, table: pd.DataFrame, progress, models) -> None:
    """What the added model learned (its answers and words), for the map; a failure here only leaves it
    undescribed (the map says how to describe it), the model stays added."""
    from core.map.describe import update_descriptions

    try:
        update_descriptions(users.catalog(), table, progress=progress, models=models)
    except Exception:  # noqa: BLE001 - the model is added and measured; describing it is a bonus
        log.warning("describing %s failed", list(table["name"]), exc_info=True)


def added(pool: pools.Pool) -> None:
    """Once the model is measured: select it on the map and say so (once)."""
    job = jobs.finished_job(ADD_JOB, once=True)
    if job is None:
        return
    added_name = str(job.result["name"].iloc[0])
    ui.remember(ui.SELECTION_KEY, pool, names=[added_name])
    st.success(f"**{ui.plain(added_name)}** was added to your models. It is on the map now (a diamond), selected.")
    ui.link("pages/map.py", "See it on the map")


def your_models(users: userpool.UserPool) -> None:
    rows = users.rows()
    st.subheader("Your models")
    if not rows:
        st.caption("None yet.")
        return
    frame = pd.DataFrame(rows)
    st.dataframe(frame, hide_index=True, width="stretch")
    left, right = st.columns([3, 1])
    name = left.selectbox("Remove a model", [r["name"] for r in rows], index=None, key="add_remove_name",
                          placeholder="Choose one of your models")
    right.markdown("&nbsp;")
    if right.button("Remove", disabled=name is None, key="add_remove"):
        with ui.guard("removing the model"):
            users.remove(name)
            st.toast(f"{name} was removed.")
            st.rerun()


main()
