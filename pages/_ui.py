"""Glue shared by the pages: the sidebar, cached loads, shared session state, progress bars and error display.

Pages stay thin: every computation is a ``core`` call. Loaded data sits behind ``st.cache_data`` (copied out to
each caller), heavy objects (vector matrices, fitted projectors, the lock registry) behind ``st.cache_resource``
(shared by every session, never mutated), and what one user did (selection, last task, last merge) in
``st.session_state``. Cache keys include file modification times, so a file written by another session (a model
added to the user catalog, vectors recomputed) shows up on the next rerun.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.catalog import Catalog, read_catalog
from core.errors import DeltaAtlasError
from core.jobs import JobLocks
from core.progress import Progress
from core.userpool import UserPool
from core.vectors import label_columns, matrix, read_vectors

log = logging.getLogger("delta_atlas.app")

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "DELTA_ATLAS_DATA_DIR"     # where catalogs are looked for (default: data/ in the repository)
CATALOG_ENV = "DELTA_ATLAS_CATALOG"       # the catalog opened first (default: the demo zoo)
DEMO_CATALOG = ROOT / "data" / "demo" / "catalog.csv"

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


# ---- which pool ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pool:
    """The catalog the sidebar chose, where its vectors live, and its title for people."""

    catalog_path: Path
    vectors_path: Path
    title: str
    is_user: bool = False
    base: str | None = None  # the base whose models are shown, when the catalog has several


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or ROOT / "data")


def user_pool() -> UserPool:
    return UserPool()


def vectors_path_for(catalog_path: Path) -> Path:
    """Where a catalog's vectors live: ``catalog.csv`` -> ``vectors.parquet``, ``pool.csv`` -> ``pool.vectors.parquet``
    (same folder); an existing file named as ``core.task`` looks for them wins."""
    folder, stem = catalog_path.parent, catalog_path.stem
    default = folder / ("vectors.parquet" if stem == "catalog" else f"{stem}.vectors.parquet")
    candidates = [default, folder / f"{stem}_vectors.parquet", folder / f"{stem}.parquet", folder / "vectors.parquet"]
    return next((p for p in candidates if p.is_file()), default)


def find_catalogs() -> list[Path]:
    """The default catalog first, then every ``catalog*.csv`` and ``*/catalog*.csv`` under the data folder."""
    first = Path(os.environ.get(CATALOG_ENV) or DEMO_CATALOG)
    found = [first] if first.is_file() else []
    folder = data_dir()
    user_folder = user_pool().root.resolve()
    for path in sorted([*folder.glob("catalog*.csv"), *folder.glob("*/catalog*.csv")]):
        if path.resolve() != first.resolve() and path.resolve().parent != user_folder:
            found.append(path)
    return found


def title_of(path: Path) -> str:
    if path.resolve() == DEMO_CATALOG.resolve():
        return "Demo zoo (built in)"
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def sidebar() -> Pool:
    """Draw the sidebar (catalog choice, device, running jobs) and return the chosen pool."""
    users = user_pool()
    options = [str(p) for p in find_catalogs()]
    if users.catalog_path.is_file():
        options.append(str(users.catalog_path))
    titles = {o: ("Your models" if Path(o) == users.catalog_path else title_of(Path(o))) for o in options}
    with st.sidebar:
        if not options:
            st.warning("No catalog found. Build the demo zoo with `python -m core build-demo`, or put a "
                       "catalog.csv in the data folder.")
            pool = Pool(DEMO_CATALOG, vectors_path_for(DEMO_CATALOG), "Demo zoo (not built yet)")
        else:
            if st.session_state.get(CATALOG_KEY) not in options:
                st.session_state[CATALOG_KEY] = options[0]
            choice = st.selectbox("Pool of models", options, key=CATALOG_KEY, format_func=titles.get,
                                  help="The demo zoo is built in. Any catalog.csv in the data folder appears here, "
                                       "and so do the models you add yourself.")
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


# ---- cached loads ----------------------------------------------------------------------------------------------

def stamp(path: Path) -> int:
    """A cache key part that changes when the file does (0 when it is missing)."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_data(show_spinner=False, max_entries=16)
def load_catalog(path: str, mtime: int) -> Catalog:
    return read_catalog(path)


def catalog_of(pool: Pool) -> Catalog:
    return load_catalog(str(pool.catalog_path), stamp(pool.catalog_path))


@dataclass(frozen=True)
class PoolData:
    """The models of one base that have vectors: labels (one row per model) and the matrix [n, d], read-only."""

    frame: pd.DataFrame      # name, labels..., origin ("pool" or "yours"); never mutated, copy before changing
    X: np.ndarray            # [n_models, d] float32, read-only
    base: str
    bases: tuple[str, ...]   # every base in the catalog (the map shows one at a time)
    missing: tuple[str, ...]  # catalog models without a vector yet
    key: str                 # identifies this data in other caches (paths and modification times)
    digest: str = ""         # identifies the content (names and vectors), stable across restarts and copies

    @property
    def has_mine(self) -> bool:
        return bool((self.frame["origin"] == "yours").any()) if len(self.frame) else False

    @property
    def core_vectors(self) -> pd.DataFrame | None:
        """What to pass as ``vectors=`` to core's task search and merge: None when the pool's own file holds exactly
        these models (core then also reads the engine settings stored with it), else this table (the user's models
        added, or one base of several)."""
        return self.table if self.has_mine or len(self.bases) > 1 else None

    @property
    def table(self) -> pd.DataFrame:
        """A vector table (core.vectors format) of these models, for core calls that take one."""
        out = self.frame.drop(columns=["origin"]).copy()
        out.insert(1, "vector", list(self.X))
        return out


@st.cache_resource(show_spinner=False, max_entries=8)
def _load_pool_data(catalog: str, vectors: str, base: str | None, key: str) -> PoolData | None:
    cat = load_catalog(catalog, stamp(Path(catalog)))
    bases = tuple(dict.fromkeys(str(e.base) for e in cat))
    base = base if base in bases else bases[0]
    names = [e.name for e in cat if str(e.base) == base]
    if not Path(vectors).is_file():
        return PoolData(pd.DataFrame(columns=["name", "origin"]), np.zeros((0, 0), np.float32), base, bases,
                        tuple(names), key, "")
    table = read_vectors(vectors)
    table = table[table["name"].isin(names)].assign(origin="pool")
    users = user_pool()
    if Path(catalog).resolve() != users.catalog_path.resolve():
        mine = users.vectors(base=base)
        if mine is not None:
            mine = mine[~mine["name"].isin(table["name"])].assign(origin="yours")
            table = pd.concat([table, mine], ignore_index=True)
    if len(table):
        dims = pd.Series([len(v) for v in table["vector"]])
        table = table[(dims == dims.mode()[0]).to_numpy()]  # one base, one width; anything else cannot be compared
    table = table.reset_index(drop=True)
    X = matrix(table)
    X.setflags(write=False)
    frame = table.drop(columns=["vector"])
    frame[label_columns(frame)] = frame[label_columns(frame)].fillna("").astype(str)
    have = set(frame["name"])
    missing = tuple(n for n in names if n not in have)
    digest = hashlib.sha256("\n".join(frame["name"]).encode() + X.tobytes()).hexdigest()[:24]
    return PoolData(frame, X, base, bases, missing, key, digest)


def pool_data(pool: Pool) -> PoolData:
    """The pool's vectors (plus the user's own models of the same base), cached across reruns and sessions."""
    users, base = user_pool(), pool.base
    key = "|".join(map(str, [pool.catalog_path, stamp(pool.catalog_path), pool.vectors_path, stamp(pool.vectors_path),
                             users.root, stamp(users.vectors_path), stamp(users.catalog_path), base]))
    return _load_pool_data(str(pool.catalog_path), str(pool.vectors_path), base, key)


def combined_catalog(pool: Pool, data: PoolData) -> Catalog:
    """The pool's catalog plus the user's models of the same base, so that core calls can use both."""
    cat = catalog_of(pool)
    users = user_pool()
    mine = users.catalog() if not pool.is_user and users.catalog_path.is_file() else None
    if mine is None:
        return cat
    known = set(cat.names)
    extra = [e for e in mine if e.name not in known and str(e.base) == data.base]
    columns = list(dict.fromkeys([*cat.label_columns, *mine.label_columns]))
    return Catalog(entries=[*cat.entries, *extra], label_columns=columns, path=cat.path)


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


# ---- the map: projection, clusters, quality (cached per pool and settings) -------------------------------------

LAYOUTS = {"UMAP": "umap", "PCA": "pca", "t-SNE": "tsne"}
MAP_SETTINGS_KEY = "map_settings"  # a copy of the Map page's choices that outlives its widgets
MAP_DEFAULTS = {"layout": "UMAP", "neighbours": "auto", "seed": 0}
QUALITY_SAMPLE = 2000  # models the map-quality measure looks at, at most
SPREAD_UP_TO, SPREAD_MIN_DIST = 500, 0.5  # UMAP's min_dist for pools up to this size (0.1 above)


def map_settings() -> dict:
    return {**MAP_DEFAULTS, **st.session_state.get(MAP_SETTINGS_KEY, {})}


@st.cache_resource(show_spinner=False, max_entries=16)
def _projector(key: str, method: str, n_neighbors: int | None, min_dist: float, seed: int, _X: np.ndarray):
    from core.projection import Projector

    return Projector(method=method, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed).fit(_X)


def projector(data: PoolData, settings: dict | None = None):
    """The fitted map projector of this pool (shared by every session; ``transform`` places new points)."""
    return _projector(data.key, *_layout_args(data, settings or map_settings()), data.X)


def _layout_args(data: PoolData, settings: dict) -> tuple[str, int | None, float, int]:
    """(method, n_neighbors, min_dist, seed) for the Projector. Small pools get a larger min_dist, so that models of
    one group spread into a clickable cloud instead of a single blot."""
    neighbours = settings["neighbours"]
    n_neighbors = None if neighbours == "auto" else min(int(neighbours), max(len(data.X) - 1, 2))
    min_dist = SPREAD_MIN_DIST if len(data.X) <= SPREAD_UP_TO else 0.1
    return LAYOUTS[settings["layout"]], n_neighbors, min_dist, int(settings["seed"])


@st.cache_data(show_spinner=False, max_entries=32)
def _map_embedding(digest: str, method: str, n_neighbors: int | None, min_dist: float, seed: int,
                   _data: PoolData) -> np.ndarray:
    """The 2-D points of the map. Kept on disk too (``$DELTA_ATLAS_CACHE/maps``), keyed by the vectors' content, so
    that a restarted server opens a known pool's map without computing it again (UMAP compiles for seconds)."""
    from core.cache import default_cache_dir

    path = default_cache_dir() / "maps" / f"{digest}-{method}-{n_neighbors or 'auto'}-{min_dist}-{seed}.npy"
    try:
        embedding = np.load(path)
        if embedding.shape == (len(_data.X), 2):
            return embedding
    except (OSError, ValueError):
        pass
    projector = _projector(_data.key, method, n_neighbors, min_dist, seed, _data.X)
    embedding = np.asarray(projector.embedding_, dtype=np.float64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, embedding)
        tmp.replace(path)
    except OSError as exc:  # a read-only disk only costs the next restart some seconds
        log.warning("map not cached on disk (%s)", exc)
    return embedding


def map_embedding(data: PoolData, settings: dict | None = None) -> np.ndarray:
    """[n, 2] map coordinates, from memory, disk or a fresh fit."""
    return _map_embedding(data.digest, *_layout_args(data, settings or map_settings()), data)


@st.cache_data(show_spinner=False, max_entries=32)
def _clusters(key: str, k: str | int, _X: np.ndarray) -> tuple[np.ndarray, int, float]:
    from core.projection import Clusterer

    fit = Clusterer(n_clusters=k, random_state=0).fit(_X)
    return np.asarray(fit.labels_), int(fit.n_clusters_), float(fit.silhouette_)


def clusters(data: PoolData, k: str | int = "auto") -> tuple[list[str], int, float]:
    """Group names ('group 1', ...) per model, the number of groups and their silhouette."""
    labels, n, silhouette = _clusters(data.key, k, data.X)
    return [f"group {int(label) + 1}" for label in labels], n, silhouette


@st.cache_data(show_spinner=False, max_entries=32)
def _quality(key: str, layout: tuple, _X: np.ndarray, _embedding: np.ndarray) -> tuple[dict, str]:
    from core.projection import describe_quality, map_quality

    note = ""
    if len(_X) > QUALITY_SAMPLE:  # trustworthiness needs all pairwise distances: measure a random sample
        rows = np.random.default_rng(0).choice(len(_X), QUALITY_SAMPLE, replace=False)
        _X, _embedding = _X[rows], _embedding[rows]
        note = f" (Measured on a random sample of {QUALITY_SAMPLE:,} models.)"
    quality = map_quality(_X, _embedding, k=min(10, len(_X) - 1))
    return quality, describe_quality(quality) + note


def quality(data: PoolData, embedding: np.ndarray, settings: dict) -> tuple[dict, str]:
    layout = (settings["layout"], settings["neighbours"], settings["seed"])
    return _quality(data.key, layout, data.X, embedding)


@st.cache_data(show_spinner=False, max_entries=64)
def _label_silhouette(key: str, column: str, _X: np.ndarray, _labels: tuple) -> float | None:
    from core.projection import label_silhouette

    labels = np.asarray(_labels, dtype=object)
    if len(_X) > QUALITY_SAMPLE:  # all pairwise distances again: a random sample says as much
        rows = np.random.default_rng(0).choice(len(_X), QUALITY_SAMPLE, replace=False)
        _X, labels = _X[rows], labels[rows]
    value = float(label_silhouette(_X, list(labels)))
    return None if np.isnan(value) else value


def label_silhouette(data: PoolData, column: str) -> float | None:
    """Silhouette of a label column on the full vectors, or None when it cannot say anything (one group only,
    or every model a group of its own)."""
    values = data.frame[column].astype(str)
    known = values != ""
    groups = values[known].nunique()
    if groups < 2 or groups >= known.sum() or known.sum() < 3:
        return None
    return _label_silhouette(data.key, column, data.X[known.to_numpy()], tuple(values[known]))


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
