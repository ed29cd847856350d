"""Glue shared by the pages: the sidebar, shared session state, the process-wide job queue, error display and links.
Loading and caching the pools lives in ``pools``; following a job in ``jobs``; the examples picker in
``task_examples``; what a model learned in ``learned``; charts in ``charts``.

Pages stay thin: every computation is a ``core`` call; what one user did (selection, last task, last merge) is
kept in ``st.session_state`` so that the other pages can start from it.
"""
from __future__ import annotations

import logging
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from core.errors import DeltaAtlasError
from core.jobs import JobQueue, noun
from core.pool.folder import vectors_target
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


@st.cache_resource(show_spinner=False)
def job_queue() -> JobQueue:
    """One line of heavy jobs per base model, per server process, shared by every browser session."""
    return JobQueue(is_alive=session_alive)


def session_alive(session: str) -> bool:
    """Whether a browser session is still connected (always True outside a server, as in AppTest)."""
    from streamlit.runtime import Runtime

    return not Runtime.exists() or Runtime.instance().is_active_session(session)


def connected_sessions() -> int | None:
    """How many browser sessions the server holds now; None outside a server (as in AppTest) or where Streamlit's
    session manager cannot be read (it is not public API: a newer Streamlit may move it)."""
    from streamlit.runtime import Runtime

    if not Runtime.exists():
        return None
    try:
        return int(Runtime.instance()._session_mgr.num_active_sessions())
    except Exception:  # noqa: BLE001 - unknown counts as "not alone": the jobs then leave a core to the pages
        return None


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
