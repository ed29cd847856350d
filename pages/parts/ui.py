"""Glue shared by the pages: the sidebar, shared session state, heavy-work locks, progress bars, error display and
the task-examples picker. Loading and caching the pools lives in ``pools``.

Pages stay thin: every computation is a ``core`` call; what one user did (selection, last task, last merge) is
kept in ``st.session_state`` so that the other pages can start from it.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.errors import DeltaAtlasError
from core.jobs import Job, JobQueue, noun
from core.pool.folder import vectors_target
from core.progress import Progress
from core.textio import markdown_literal
from pages.parts import pools as _pools
from pages.parts.pools import Pool, find_catalogs, load_catalog, stamp, title_of, user_pool

log = logging.getLogger("delta_atlas.app")


# session-state keys shared between pages
CATALOG_KEY = "catalog"          # the sidebar's choice (a path, as text)
SELECTION_KEY = "map_selection"  # {"catalog": path, "names": [...]} picked on the map
TASK_KEY = "task"                # {"catalog", "title", "examples", "result"}: the last task search
CANDIDATES_KEY = "merge_candidates"  # {"catalog", "names", "why"}: what the Merge page starts from
POOL_KEY = "_pool"               # the Pool drawn by the sidebar in this run
APP_KEY = "_from_app"            # set by app.py: the sidebar is drawn there, not by the page

STAGES = {  # progress stage -> plain words
    "finetune": "Teaching the base model your task", "base": "Reading the base model",
    "adapters": "Measuring the adapters", "full": "Measuring the full models", "merge": "Merging the adapters",
    "search": "Trying merge weights on your examples", "evaluate": "Measuring the error on your examples",
    "embed": "Measuring how the model changed", "load": "Loading the models",
    "measure": "Checking whether the closest models help with your examples",
    "describe": "Reading what the model learned (its answers and words)",
}
STARTING = "Loading the base model (the first time after the server starts, this takes a few seconds)"
QUIET_ITEMS = {"embed", "finetune", "base", "search"}   # stages whose item is an internal name (a hash, "task")


def sidebar() -> Pool:
    """Draw the sidebar's pool choice (catalog, and base when it has several) and return the chosen pool."""
    users = user_pool()
    options = [str(p) for p in find_catalogs()]
    if users.catalog_path.is_file():
        options.append(str(users.catalog_path))
    titles = {o: ("Your models" if Path(o) == users.catalog_path else title_of(Path(o))) for o in options}
    with st.sidebar:
        if not options:
            st.warning("No catalog found. Build the demo zoo with `python -m core build-demo`, or put a "
                       "catalog.csv in the data folder.")
            demo = _pools.DEMO_CATALOG
            pool = Pool(demo, vectors_target(demo), "Demo zoo (not built yet)")
        else:
            if st.session_state.get(CATALOG_KEY) not in options:
                st.session_state[CATALOG_KEY] = options[0]
            choice = st.selectbox("Pool of models", options, key=CATALOG_KEY, format_func=titles.get,
                                  help="The demo zoo is built in. Any catalog.csv in the data folder appears here, "
                                       "and so does every CSV file in data/catalogs (the paper's pools on the "
                                       "Hugging Face Hub, or catalogs made with `python -m core catalog "
                                       "--from-hub`), and the models you add yourself.")
            path = Path(choice)
            pool = Pool(path, users.vectors_path if path == users.catalog_path else vectors_target(path),
                        titles[choice], is_user=path == users.catalog_path, base=choose_base(path))
    st.session_state[POOL_KEY] = pool
    return pool


def sidebar_footer() -> None:
    """The device in use and the heavy work running now; drawn after the page (finding the device imports torch,
    which the map does not need)."""
    with st.sidebar:
        st.caption(f"Computing on: **{device_label()}**")
        jobs = job_queue().active()
        if jobs:
            running = sum(job.state == "running" for job in jobs)
            st.caption(f"Busy: {running} running, {len(jobs) - running} waiting "
                       f"({', '.join(noun(job.kind) for job in jobs)}).")


def choose_base(catalog_path: Path) -> str | None:
    """A base selector, shown only when the catalog mixes bases (models of different bases cannot be compared)."""
    try:
        bases = list(dict.fromkeys(str(e.base) for e in load_catalog(str(catalog_path), stamp(catalog_path))))
    except DeltaAtlasError as exc:
        st.error(str(exc))
        return None
    if len(bases) < 2:
        return bases[0] if bases else None
    return st.selectbox("Base model", bases, key="base", format_func=lambda b: Path(b).name or b,
                        help="Only models finetuned from the same base can be compared; the app shows one base.")


def page_setup(title: str) -> Pool:
    """Start a page: when it runs on its own (not through app.py), set the page up and draw the sidebar too."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory and not st.session_state.get(APP_KEY):
        # Streamlit's legacy multipage mode (a pages/ folder next to app.py) ran this page without app.py, because
        # the server's first visitor opened it by its own URL. Leave that mode and run again through app.py's
        # st.navigation: the page keeps its URL, so the visitor lands on the same page. (AppTest re-enters the
        # legacy mode on every run; once app.py has run in the session, the page just goes on.)
        PagesManager.uses_pages_directory = False
        st.rerun()
    if not st.session_state.get(APP_KEY):
        st.set_page_config(page_title=f"{title} · Delta Atlas", layout="wide")
        pool = sidebar()
        sidebar_footer()
        return pool
    return st.session_state[POOL_KEY]


@st.cache_resource(show_spinner=False)
def warm_up_in_background() -> threading.Thread:
    """Compile UMAP's kernels once per server process, in the background, so that the first map or task search
    that needs a fresh projection does not wait for them (the map itself may come from the disk cache)."""
    def work() -> None:
        try:
            from core.map.projection import warm_up

            log.info("UMAP ready after %.1f s of compiling", warm_up())
        except Exception:  # noqa: BLE001 - only a head start: the first real map compiles it anyway
            log.warning("UMAP warm-up failed", exc_info=True)

    thread = threading.Thread(target=work, name="umap-warm-up", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False)
def device_label() -> str:
    from core.engine.device import pick_device  # imports torch: once per process

    device = pick_device(None)
    return {"cpu": "CPU", "cuda": "NVIDIA GPU (CUDA)", "mps": "Apple GPU (MPS)"}.get(device.type, str(device))


# ---- shared state ----------------------------------------------------------------------------------------------

def remembered(key: str, pool: Pool) -> dict | None:
    """A page's shared state (``TASK_KEY``, ``SELECTION_KEY``, ``CANDIDATES_KEY``) if it belongs to this pool."""
    value = st.session_state.get(key)
    return value if value and value.get("catalog") == str(pool.catalog_path) else None


def remember(key: str, pool: Pool, **value) -> None:
    """Keep ``value`` for other pages; ``token`` tells them it is new."""
    st.session_state[key] = {"catalog": str(pool.catalog_path), "token": uuid.uuid4().hex, **value}


def names_from_event(event) -> list[str]:
    """Model names picked on a map (``st.plotly_chart`` selection state), in order, without repeats. Marks drawn on
    top (the task's star...) carry no name and are skipped."""
    points = ((event or {}).get("selection") or {}).get("points") or []
    return list(dict.fromkeys(p["customdata"][0] for p in points if p.get("customdata")))


def plain(text) -> str:
    """``text`` from a user, a catalog or the Hub, shown by Streamlit's markdown as it is (core.textio)."""
    return markdown_literal(text)


LINK_STYLE = """<style>
[class*="st-key-go-to-"] a {border: 1px solid #1f5fbf; border-radius: 0.5rem; background: #1f5fbf;
                            padding: 0.3rem 0.9rem; width: fit-content;}
[class*="st-key-go-to-"] a p, [class*="st-key-go-to-"] a span {color: white !important; font-weight: 600;}
[class*="st-key-go-to-"] a:hover {background: #174a96;}
</style>"""  # a link to another page after an action ("Open the Merge page") drawn as a button, not as plain text


def link(page: str, label: str) -> None:
    """A link to another page, drawn as a button; plain text when the page runs on its own (no navigation)."""
    st.html(LINK_STYLE)
    try:
        with st.container(key=f"go-to-{Path(page).stem}"):
            st.page_link(page, label=label, icon=":material/arrow_forward:")
    except Exception:  # noqa: BLE001 - StreamlitAPIException outside st.navigation
        st.caption(f"Open **{label}** from the app's menu.")


# ---- heavy work: one shared model per base, a queue per base, progress ----------------------------------------

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
FORM = "form"  # a job's meta: the widget values of the form that started it
POLL_S = 0.5  # how often a page waiting for its job redraws its place and progress


@st.cache_resource(show_spinner=False)
def job_queue() -> JobQueue:
    """One line of heavy jobs per base model, per server process, shared by every browser session."""
    return JobQueue(is_alive=session_alive)


@st.cache_resource(show_spinner=False)
def shared_models():
    """Each base loaded once per server process and lent to one job at a time (``core.engine.shared``); never mutated:
    a task search or a merge trains or wraps a private copy. Jobs run torch on every core but one."""
    import torch

    from core.engine.device import background_threads
    from core.engine.shared import SharedModels  # imports torch: not for the map

    torch.set_num_threads(background_threads())   # the jobs leave a core to the pages
    return SharedModels()


def session_id() -> str:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def session_alive(session: str) -> bool:
    """Whether a browser session is still connected (always True outside a server, as in AppTest)."""
    from streamlit.runtime import Runtime

    return not Runtime.exists() or Runtime.instance().is_active_session(session)


def start_job(slot: str, key: str, kind: str, work, pool: Pool, form: tuple[str, ...] = (), **meta) -> None:
    """Queue ``work(progress)`` on base ``key`` for ``pool``; its id goes in the session and the URL, so that a
    reloaded tab finds the job again. ``meta`` is kept with the job for the page that shows its result, and so are
    the values of the widgets named in ``form``, which :func:`restore_form` puts back after a reload."""
    values = {k: st.session_state[k] for k in form if k in st.session_state}
    job = job_queue().submit(str(key), kind, session_id(), work,
                             {**meta, "catalog": str(pool.catalog_path), FORM: values})
    st.session_state[slot] = job.id
    st.query_params[slot] = job.id


def restore_form(slot: str) -> dict | None:
    """In a reloaded tab (the job's id in the URL, not yet in this session): put the form back as it was when the
    job started, so that the page shows what the job runs on and the next click does not run something else.
    Returns the job's meta then, else None. Call it before the page draws its widgets."""
    job_id = st.query_params.get(slot)
    if st.session_state.get(slot) or not job_id or not JOB_ID.match(str(job_id)):
        return None
    job = job_queue().get(str(job_id))
    if job is None:
        return None
    for key, value in job.meta.get(FORM, {}).items():
        if value == UPLOAD:  # an uploaded file cannot be put back in its uploader; its examples can
            value = LAST_TASK
            st.session_state[f"_{slot}_examples"] = {"title": job.meta.get("title", ""),
                                                     "examples": job.meta.get("examples", [])}
        st.session_state[key] = value
    return job.meta


def restored_examples(slot: str) -> dict | None:
    """The examples of an uploaded file that :func:`restore_form` put back ({"title", "examples"}), if any."""
    return st.session_state.get(f"_{slot}_examples")


def job_in(slot: str) -> Job | None:
    """The job this page started in this session, or the one named in the URL (a reloaded tab), now this
    session's; None when there is none or the server no longer knows it."""
    job_id = st.session_state.get(slot) or st.query_params.get(slot)
    if not job_id or not JOB_ID.match(str(job_id)):
        return None
    job = job_queue().claim(job_id, session_id())
    if job is None:
        forget_job(slot)
        return None
    st.session_state[slot] = job.id
    return job


def forget_job(slot: str) -> None:
    st.session_state.pop(slot, None)
    if slot in st.query_params:
        del st.query_params[slot]


def follow(job: Job) -> Job:
    """While the job waits or runs: its place in the line ("2 searches ahead of yours...") or its progress, and a
    Cancel button. Returns when the job has ended (or the user clicks, which starts a new run of the page)."""
    queue = job_queue()
    note, bar, cancel = st.empty(), st.empty(), st.empty()
    if cancel.button(f"Cancel this {noun(job.kind)}", key=f"cancel_{job.id}"):
        queue.cancel(job.id)
    while job.active:
        if job.state == "queued":
            note.info(queue.place(job.id).describe(), icon=":material/hourglass_top:")
            bar.empty()
        else:
            note.empty()
            p = job.progress
            bar.progress(p.fraction if p else 0.0, text=progress_words(p) if p else STARTING)
        time.sleep(POLL_S)
    for slot in (note, bar, cancel):
        slot.empty()
    return job


def progress_words(p: Progress) -> str:
    """A progress report in plain words: "Teaching the base model your task: step 3 of 40"."""
    words = STAGES.get(p.stage, p.stage.capitalize())
    text = f"{words}: {'step ' if p.stage == 'finetune' else ''}{p.done} of {p.total}"
    if p.item and p.stage not in QUIET_ITEMS:
        text += f" · {p.item}"
    return text


def finished_job(slot: str, once: bool = False) -> Job | None:
    """Follow the page's job (if any) to its end and return it when it is done; a failure or cancellation is
    shown once and the job forgotten (None). With ``once``, a done job is forgotten too (its page shows what it
    did once, as "added")."""
    job = job_in(slot)
    if job is None:
        return None
    follow(job)
    if ended_badly(job) or once:
        forget_job(slot)
    return None if job.state != "done" else job


def keep_result(job: Job | None, key: str, pool: Pool) -> None:
    """Put a finished job's result (and its meta) in the shared state ``key``, once, when it is this pool's."""
    if job is None or job.meta.get("catalog") != str(pool.catalog_path):
        return
    if (remembered(key, pool) or {}).get("token") != job.id:
        remember(key, pool, **{**job.meta, "token": job.id, "result": job.result})


def ended_badly(job: Job) -> bool:
    """Say why a failed or cancelled job ended (once: the page forgets it then); True when it did."""
    if job.state == "failed":
        st.error(job.error)
    elif job.state == "cancelled":
        st.info(job.error)
    else:
        return False
    return True


@contextmanager
def guard(doing: str):
    """Show errors as one short message, never a traceback: ours as they are, anything else with a pointer to the
    server log. Streamlit's own control flow (rerun, stop) passes through: it is not an ``Exception``."""
    try:
        yield
    except DeltaAtlasError as exc:
        st.error(str(exc))
    except Exception:  # noqa: BLE001 - the page must stay up; the log has the details
        log.exception("failed while %s", doing)
        st.error(f"Something went wrong while {doing}. The details are in the server log; try again, or try other "
                 "settings or other models.")


def words_for_silhouette(value: float) -> str:
    """A silhouette score (-1 to 1) in plain words."""
    if value >= 0.5:
        return "form clearly separate groups"
    if value >= 0.25:
        return "form groups that partly overlap"
    if value > 0.05:
        return "barely form groups"
    return "are mixed together (no grouping)"


# ---- task examples (Find and Merge pages) ----------------------------------------------------------------------

SAMPLE, UPLOAD, LAST_TASK = "Try a sample task", "Upload my own examples", "The examples of my last task search"
FORMAT_HELP = """One example per line in a **.jsonl** file, e.g.
`{"instruction": "What is 12 * 3?", "response": "12 * 3 = 36."}`
(also accepted: prompt/completion, question/answer, input/output), or a **.csv** with those two columns, a
**.json** list, or a **.txt** file with one example per paragraph. 10 to 50 examples work best."""


@st.cache_data(show_spinner=False)
def _sample_examples(path: str, mtime: int) -> list:
    from core.reuse.examples import load_examples

    return load_examples(path)


def examples_picker(prefix: str, last_task: dict | None = None) -> tuple[str, list]:
    """Pick examples from the last task search, a sample task or an upload: (title, examples). Problems with an
    upload are shown under it; the examples are then empty."""
    from core.reuse.examples import (  # imports torch (through core.reuse.train): not for the map
        parse_examples,
        sample_tasks,
    )

    sources = [*([LAST_TASK] if last_task else []), SAMPLE, UPLOAD]
    source = st.radio("Examples", sources, horizontal=True, key=f"{prefix}_source")
    if source == LAST_TASK:
        title, examples = last_task["title"], last_task["examples"]
    elif source == SAMPLE:
        tasks = sample_tasks()
        if not tasks:
            st.warning("No sample task found in data/sample_tasks: upload your own examples instead.")
            return "", []
        title = st.selectbox("Sample task", list(tasks), key=f"{prefix}_sample",
                             help="Small example sets the project wrote itself, one per domain of the demo zoo.")
        examples = _sample_examples(str(tasks[title]), stamp(tasks[title]))
    else:
        upload = st.file_uploader("Examples file", type=["jsonl", "json", "csv", "tsv", "txt"], key=f"{prefix}_upload")
        st.caption(FORMAT_HELP)
        if upload is None:
            return "", []
        title = upload.name
        try:
            examples = parse_examples(upload.getvalue(), upload.name)
        except DeltaAtlasError as exc:
            st.error(str(exc))
            return title, []
    with st.expander(f"See the {len(examples)} examples"):
        rows = pd.DataFrame([{"instruction": e.instruction, "input": e.input, "response": e.response} for e in examples])
        st.dataframe(rows.replace("", None).dropna(axis=1, how="all"), hide_index=True, width="stretch")
    return title, examples
