"""Glue shared by the pages: the sidebar, shared session state, heavy-work locks, progress bars, error display and
the task-examples picker. Loading and caching the pools lives in ``_pools``.

Pages stay thin: every computation is a ``core`` call; what one user did (selection, last task, last merge) is
kept in ``st.session_state`` so that the other pages can start from it.
"""
from __future__ import annotations

import logging
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import streamlit as st

from core.errors import DeltaAtlasError
from core.jobs import JobLocks
from core.progress import Progress
from pages import _pools
from pages._pools import Pool, find_catalogs, load_catalog, stamp, title_of, user_pool, vectors_path_for

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
    "search": "Searching the merge weights", "evaluate": "Measuring the loss on your examples",
    "embed": "Measuring the merged model", "load": "Loading the models",
}


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
            pool = Pool(demo, vectors_path_for(demo), "Demo zoo (not built yet)")
        else:
            if st.session_state.get(CATALOG_KEY) not in options:
                st.session_state[CATALOG_KEY] = options[0]
            choice = st.selectbox("Pool of models", options, key=CATALOG_KEY, format_func=titles.get,
                                  help="The demo zoo is built in. Any catalog.csv in the data folder appears here, "
                                       "and so does every CSV file in data/catalogs (the paper's pools on the "
                                       "Hugging Face Hub, or catalogs made with `python -m core catalog "
                                       "--from-hub`), and the models you add yourself.")
            path = Path(choice)
            pool = Pool(path, users.vectors_path if path == users.catalog_path else vectors_path_for(path),
                        titles[choice], is_user=path == users.catalog_path, base=choose_base(path))
    st.session_state[POOL_KEY] = pool
    return pool


def sidebar_footer() -> None:
    """The device in use and the heavy work running now; drawn after the page (finding the device imports torch,
    which the map does not need)."""
    with st.sidebar:
        st.caption(f"Computing on: **{device_label()}**")
        for job in job_locks().busy():
            st.caption(f"Busy: someone is {job.what} on {Path(job.key).name}.")


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
            from core.projection import warm_up

            log.info("UMAP ready after %.1f s of compiling", warm_up())
        except Exception:  # noqa: BLE001 - only a head start: the first real map compiles it anyway
            log.warning("UMAP warm-up failed", exc_info=True)

    thread = threading.Thread(target=work, name="umap-warm-up", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False)
def device_label() -> str:
    from core.device import pick_device  # imports torch: once per process

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


def link(page: str, label: str) -> None:
    """A link to another page; plain text when the page runs on its own (no navigation to link through)."""
    try:
        st.page_link(page, label=label)
    except Exception:  # noqa: BLE001 - StreamlitAPIException outside st.navigation
        st.caption(f"Open **{label}** from the app's menu.")


# ---- heavy work: locks, progress, errors -----------------------------------------------------------------------

@st.cache_resource(show_spinner=False)
def job_locks() -> JobLocks:
    """One registry per server process, shared by every browser session."""
    return JobLocks()


def owner() -> str:
    if "_owner" not in st.session_state:
        st.session_state["_owner"] = uuid.uuid4().hex
    return st.session_state["_owner"]


@contextmanager
def exclusive(key: str, what: str):
    """Run heavy work on model ``key`` alone; a user who has to wait is told why."""
    note = st.empty()
    with job_locks().hold(str(key), owner(), what, on_wait=lambda message: note.info(message[0].upper() + message[1:])):
        note.empty()
        yield


class ProgressBar:
    """A ``ProgressFn`` that draws a ``st.progress`` bar in plain words and keeps the losses it saw."""

    def __init__(self, text: str):
        self.bar = st.progress(0.0, text=text)
        self.losses: list[float] = []

    def __call__(self, p: Progress) -> None:
        if p.loss is not None and p.stage == "finetune":
            self.losses.append(p.loss)
        words = STAGES.get(p.stage, p.stage.capitalize())
        text = f"{words}: {'step' if p.stage == 'finetune' else ''} {p.done} of {p.total}".replace(":  ", ": ")
        if p.item:
            text += f" · {p.item}"
        if p.loss is not None:
            text += f" · loss {p.loss:.3f}"
        self.bar.progress(p.fraction, text=text)

    def done(self, text: str = "Done.") -> None:
        self.bar.progress(1.0, text=text)

    def clear(self) -> None:
        """Take the bar away (the work failed: its message says why, without a stale "Reading..." above it)."""
        self.bar.empty()


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
    from core.examples import load_examples

    return load_examples(path)


def examples_picker(prefix: str, last_task: dict | None = None) -> tuple[str, list]:
    """Pick examples from the last task search, a sample task or an upload: (title, examples). Problems with an
    upload are shown under it; the examples are then empty."""
    from core.examples import parse_examples, sample_tasks  # imports torch (through core.train): not for the map

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
