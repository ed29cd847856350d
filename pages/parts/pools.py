"""The pools the app can show, loaded and cached: catalogs, vector tables, the map's projection, clusters and quality.

Data sits behind ``st.cache_data`` (copied out to each caller); heavy objects (catalogs, a pool's vector matrix,
fitted projectors) behind ``st.cache_resource``, shared by every session and never mutated. Cache keys include file
modification times, so a file written by another session (a model added, vectors recomputed) shows on the next
rerun; the map's 2-D points, clusters, quality, label silhouettes and lineage check are also kept on disk, keyed by
the vectors' content, so that a restarted server draws a pool of 50,000 models in seconds.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import DeltaAtlasError
from core.pool import folder as pool_folder
from core.pool.catalog import Catalog, read_catalog
from core.pool.folder import DEMO_CATALOG
from core.pool.userpool import UserPool
from core.pool.vectors import label_columns, matrix, read_vectors

log = logging.getLogger("delta_atlas.app")

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR_ENV = "DELTA_ATLAS_DATA_DIR"     # where catalogs are looked for (default: data/ in the repository)
CATALOG_ENV = "DELTA_ATLAS_CATALOG"       # the catalog opened first (default: the demo zoo)
CATALOGS_FOLDER = "catalogs"              # data/catalogs/*.csv: ready catalogs, one pool per file
HUB_NEEDS = "a GPU and the Hugging Face Hub"  # what a pool of hub models needs before it has vectors


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


def find_catalogs() -> list[Path]:
    """The default catalog first, then every ``catalog*.csv`` and ``*/catalog*.csv`` under the data folder, then
    every CSV file in its ``catalogs/`` folder (ready catalogs, such as the paper's pools on the Hub)."""
    first = Path(os.environ.get(CATALOG_ENV) or DEMO_CATALOG)
    found = [first] if first.is_file() else []
    folder = data_dir()
    user_folder = user_pool().root.resolve()
    for path in [*sorted([*folder.glob("catalog*.csv"), *folder.glob("*/catalog*.csv")]),
                 *sorted((folder / CATALOGS_FOLDER).glob("*.csv"))]:
        if path.resolve() not in {p.resolve() for p in found} and path.resolve().parent != user_folder:
            found.append(path)
    return found


def title_of(path: Path) -> str:
    """A catalog's name for people: its TITLE file (one line beside a shipped pool), else 'Demo zoo (built in)' for
    the default zoo, else its folder (``x/catalog.csv``) or file name."""
    if own := pool_folder.title(path):
        return own
    if path.resolve() == DEMO_CATALOG.resolve():
        return "Demo zoo (built in)"
    return (path.parent.name if path.stem == "catalog" else path.stem).replace("_", " ")


# ---- cached loads ----------------------------------------------------------------------------------------------

def stamp(path: Path) -> int:
    """A cache key part that changes when the file does (0 when it is missing)."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_resource(show_spinner=False, max_entries=16)
def load_catalog(path: str, mtime: int) -> Catalog:
    """The catalog, shared by every session and never mutated (a copy per caller, as ``st.cache_data`` makes, takes
    seconds for 50,000 models)."""
    return read_catalog(path)


def catalog_of(pool: Pool) -> Catalog:
    return load_catalog(str(pool.catalog_path), stamp(pool.catalog_path))


@st.cache_data(show_spinner=False, max_entries=8)
def _descriptions(path: str, mtime: int) -> dict:
    from core.map.describe import load_descriptions

    return load_descriptions(path)


def descriptions(pool: Pool) -> dict:
    """What each model of the pool learned (core.map.describe: answers and words), with the user's added models of
    the same base; {} when not computed yet."""
    from core.map.describe import descriptions_path

    found = _descriptions(str(pool.catalog_path), stamp(descriptions_path(pool.catalog_path)))
    users = user_pool().catalog_path
    if pool.is_user or not descriptions_path(users).is_file():
        return found
    mine = _descriptions(str(users), stamp(descriptions_path(users)))
    if found and found.get("base", {}).get("key") != mine.get("base", {}).get("key"):   # another base's models
        return found
    return {**mine, **found, "models": {**mine.get("models", {}), **found.get("models", {})}}


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
    pool_digest: str = ""    # the same for the pool's own models only (what the map is fitted on)

    @property
    def own(self) -> np.ndarray:
        """[n] True for the pool's own models, False for models a visitor added."""
        return (self.frame["origin"] == "pool").to_numpy() if len(self.frame) else np.zeros(0, bool)

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
        """A vector table (core.pool.vectors format) of these models, for core calls that take one."""
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
    table = cat.align(read_vectors(vectors), Path(vectors).name)
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
    own = (frame["origin"] == "pool").to_numpy()
    return PoolData(frame, X, base, bases, missing, key, _digest(frame["name"], X),
                    _digest(frame["name"][own], X[own]))


def _digest(names: pd.Series, X: np.ndarray) -> str:
    return hashlib.sha256("\n".join(names).encode() + np.ascontiguousarray(X).tobytes()).hexdigest()[:24]


def pool_data(pool: Pool) -> PoolData:
    """The pool's vectors (plus the user's own models of the same base), cached across reruns and sessions."""
    if not pool.catalog_path.is_file():
        if pool.catalog_path.resolve() == DEMO_CATALOG.resolve():
            raise DeltaAtlasError("The demo zoo is not built yet: run `python -m core build-demo` once, then reload "
                                  "this page.")
        raise DeltaAtlasError(f"The catalog {pool.catalog_path} is gone: choose another pool in the sidebar.")
    users, base = user_pool(), pool.base
    key = "|".join(map(str, [pool.catalog_path, stamp(pool.catalog_path), pool.vectors_path, stamp(pool.vectors_path),
                             users.root, stamp(users.vectors_path), stamp(users.catalog_path), base]))
    return _load_pool_data(str(pool.catalog_path), str(pool.vectors_path), base, key)


def hub_needs(pool: Pool, data: PoolData) -> str | None:
    """What the pool's models need before they can be measured when their base is a Hugging Face hub id (the
    catalog's ``needs`` label, else a GPU and the Hub); None for a local or built-in base."""
    entries = [e for e in catalog_of(pool) if str(e.base) == data.base]
    if not entries or entries[0].base.hub_id is None:
        return None
    return entries[0].labels.get("needs") or HUB_NEEDS


def base_size_words(base: str) -> str:
    """"about 16 GB (8 billion numbers in 16-bit precision)" from a hub id that names its size ("Llama-3.1-8B"),
    else "" (nothing is downloaded to find out)."""
    found = re.search(r"(?<![\d.x])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", base.rsplit("/", 1)[-1])
    if not found:
        return ""
    billions = float(found.group(1))
    return f"about {2 * billions:.0f} GB ({billions:g} billion numbers in 16-bit precision)"


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


# ---- the map: projection, clusters, quality (cached per pool and settings) -------------------------------------

LAYOUTS = {"UMAP": "umap", "PCA": "pca", "t-SNE": "tsne"}
MAP_SETTINGS_KEY = "map_settings"  # a copy of the Map page's choices that outlives its widgets
MAP_DEFAULTS = {"layout": "UMAP", "neighbours": "auto", "seed": 0}
QUALITY_SAMPLE = 2000  # models the map-quality measure looks at, at most
SPREAD_UP_TO, SPREAD_MIN_DIST = 500, 0.5  # UMAP's min_dist for pools up to this size (0.1 above)
CLUSTERS_VERSION = "v2"  # in the clusters' disk-cache name: bump when core.map.clusters.Clusterer changes its answer


def map_settings() -> dict:
    return {**MAP_DEFAULTS, **st.session_state.get(MAP_SETTINGS_KEY, {})}


REFIT_KEY = "map_refit"  # session flag: this visitor asked for a map fitted on every model, added ones too


@dataclass(frozen=True)
class MapLayout:
    """Where every model of ``PoolData`` sits on the map ([n, 2], the data's row order) and the projector that
    places new vectors (a task, a merge) on it. The pool's own models are fitted once, keyed by their content; models
    visitors add later are placed by that fit and marked, so that nobody's map moves when someone adds a model (unless
    this session asked for a map fitted on every model, REFIT_KEY)."""

    embedding: np.ndarray
    projector: object

    def place(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(self.projector.transform(np.atleast_2d(vectors)))


def map_layout(data: PoolData, settings: dict | None = None) -> MapLayout:
    """The map of this pool: from memory, disk or a fresh fit (see MapLayout)."""
    from core.map.projection import Projector

    settings = settings or map_settings()
    refit = bool(st.session_state.get(REFIT_KEY)) and data.has_mine
    rows = np.ones(len(data.X), bool) if refit or not data.own.any() else data.own
    digest = data.digest if rows.all() else data.pool_digest
    X = data.X[rows]
    args = _layout_args(len(X), settings)
    fitted = _map_embedding(digest, *args, _X=X)
    projector = Projector.fitted_on(X, fitted, method=args[0])
    embedding = np.empty((len(data.X), 2))
    embedding[rows] = fitted
    if not rows.all():
        embedding[~rows] = projector.transform(data.X[~rows])
    return MapLayout(embedding, projector)


def projector(data: PoolData, settings: dict | None = None):
    """The projector of the pool's map (``transform`` places new points); see MapLayout."""
    return map_layout(data, settings).projector


def _layout_args(n: int, settings: dict) -> tuple[str, int | None, float, int]:
    """(method, n_neighbors, min_dist, seed) for the Projector of ``n`` models. Small pools get a larger min_dist, so
    that models of one group spread into a clickable cloud instead of a single blot."""
    neighbours = settings["neighbours"]
    n_neighbors = None if neighbours == "auto" else min(int(neighbours), max(n - 1, 2))
    min_dist = SPREAD_MIN_DIST if n <= SPREAD_UP_TO else 0.1
    return LAYOUTS[settings["layout"]], n_neighbors, min_dist, int(settings["seed"])


def _disk_file(name: str) -> Path:
    """Where a map result of a pool is kept across restarts (``$DELTA_ATLAS_CACHE/maps``)."""
    from core.engine.cache import default_cache_dir

    return default_cache_dir() / "maps" / name


def _keep_on_disk(path: Path, data: bytes) -> None:
    from core.engine.cache import atomic_write

    try:
        atomic_write(path, data)
    except OSError as exc:  # a read-only disk only costs the next restart some seconds
        log.warning("%s not cached on disk (%s)", path.name, exc)


def _json_on_disk(name: str | None, compute):
    """``compute()`` (a JSON-able value), read from ``maps/name`` when it is there, else computed and kept there;
    always computed when ``name`` is None (a pool without vectors has no content digest)."""
    path = _disk_file(name) if name else None
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))["value"]
        except (OSError, ValueError, KeyError):
            pass
    value = compute()
    if path is not None:
        _keep_on_disk(path, json.dumps({"value": value}).encode())
    return value


@st.cache_data(show_spinner=False, max_entries=32)
def _map_embedding(digest: str, method: str, n_neighbors: int | None, min_dist: float, seed: int,
                   _X: np.ndarray) -> np.ndarray:
    """The 2-D points of ``_X`` (whose content ``digest`` names). Kept on disk too (``$DELTA_ATLAS_CACHE/maps``), so
    that a restarted server opens a known pool's map without computing it again (UMAP compiles for seconds)."""
    from core.map.projection import Projector

    path = _disk_file(f"{digest}-{method}-{n_neighbors or 'auto'}-{min_dist}-{seed}.npy")
    try:
        embedding = np.load(path)
        if embedding.shape == (len(_X), 2):
            return embedding
    except (OSError, ValueError):
        pass
    fitted = Projector(method=method, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed).fit(_X)
    embedding = np.asarray(fitted.embedding_, dtype=np.float64)
    buffer = io.BytesIO()
    np.save(buffer, embedding)
    _keep_on_disk(path, buffer.getvalue())
    return embedding


def map_embedding(data: PoolData, settings: dict | None = None) -> np.ndarray:
    """[n, 2] map coordinates of the data's rows (see MapLayout)."""
    return map_layout(data, settings).embedding


@st.cache_data(show_spinner=False, max_entries=32)
def _clusters(key: str, k: str | int, digest: str, _X: np.ndarray) -> tuple[np.ndarray, int, float]:
    """Cluster labels, number of clusters and silhouette; kept on disk by the vectors' content (a pool of 50,000
    models takes ~5-10 s to cluster)."""
    from core.map.clusters import Clusterer

    path = _disk_file(f"{digest}-clusters-{k}-{CLUSTERS_VERSION}.npz") if digest else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as kept:
                if len(kept["labels"]) == len(_X):
                    return kept["labels"].astype(int), int(kept["k"]), float(kept["silhouette"])
        except (OSError, ValueError, KeyError):
            pass
    fit = Clusterer(n_clusters=k, random_state=0).fit(_X)
    labels, n, silhouette = np.asarray(fit.labels_), int(fit.n_clusters_), float(fit.silhouette_)
    if path is not None:
        buffer = io.BytesIO()
        np.savez(buffer, labels=labels.astype(np.int32), k=n, silhouette=silhouette)
        _keep_on_disk(path, buffer.getvalue())
    return labels, n, silhouette


def clusters(data: PoolData, k: str | int = "auto") -> tuple[list[str], int, float]:
    """Group names ('group 1', ...) per model, the number of groups and their silhouette."""
    labels, n, silhouette = _clusters(data.key, k, data.digest, data.X)
    return [f"group {int(label) + 1}" for label in labels], n, silhouette


def group_names(pool: Pool, data: PoolData, groups: list[str]) -> dict[str, str]:
    """A name for each group of the map, from the words its models lean towards (core.map.describe.group_names);
    {} when the pool has no descriptions yet. No label is read."""
    from core.map.describe import group_names as name_groups

    found = descriptions(pool)
    return name_groups(found, dict(zip(data.frame["name"], groups))) if found else {}


@st.cache_data(show_spinner=False, max_entries=32)
def _quality(key: str, layout: tuple, digest: str, _X: np.ndarray, _embedding: np.ndarray) -> tuple[dict, str]:
    """The map's faithfulness, in numbers and words; kept on disk beside the map's points."""
    from core.map.projection import describe_quality, map_quality

    def measure() -> list:
        X, embedding, note = _X, _embedding, ""
        if len(X) > QUALITY_SAMPLE:  # trustworthiness needs all pairwise distances: measure a random sample
            rows = np.random.default_rng(0).choice(len(X), QUALITY_SAMPLE, replace=False)
            X, embedding = X[rows], embedding[rows]
            note = f" (Measured on a random sample of {QUALITY_SAMPLE:,} models.)"
        quality = map_quality(X, embedding, k=min(10, len(X) - 1))
        return [quality, describe_quality(quality) + note]

    quality, words = _json_on_disk(digest and f"{digest}-quality-{'-'.join(map(str, layout))}.json", measure)
    return quality, words


def quality(data: PoolData, embedding: np.ndarray, settings: dict) -> tuple[dict, str]:
    layout = (settings["layout"], settings["neighbours"], settings["seed"],
              "refit" if st.session_state.get(REFIT_KEY) and data.has_mine else "kept")
    return _quality(data.key, layout, data.digest, data.X, embedding)


@st.cache_data(show_spinner=False, max_entries=64)
def _label_silhouette(key: str, column: str, digest: str, _X: np.ndarray, _values: np.ndarray) -> float | None:
    """The silhouette of one label column (on a sample of big pools); kept on disk by the vectors' content and the
    labels."""
    from core.map.clusters import label_silhouette

    def measure() -> float | None:
        rows = np.flatnonzero(_values != "")
        groups = len(set(_values[rows].tolist()))
        if groups < 2 or groups >= len(rows) or len(rows) < 3:
            return None
        if len(rows) > QUALITY_SAMPLE:  # all pairwise distances again: a random sample says as much
            rows = rows[np.random.default_rng(0).choice(len(rows), QUALITY_SAMPLE, replace=False)]
        value = float(label_silhouette(_X[rows], list(_values[rows])))
        return None if np.isnan(value) else value

    return _json_on_disk(digest and f"{digest}-silhouette-{_labels_digest(column, _values)}.json", measure)


def _labels_digest(column: str, values, *more) -> str:
    """A short hash of a label column's values (labels can change while the vectors stay the same)."""
    text = "\n".join([column, *map(str, more), *map(str, values)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def label_silhouette(data: PoolData, column: str) -> float | None:
    """Silhouette of a label column on the full vectors, or None when it cannot say anything (one group only,
    or every model a group of its own)."""
    values = data.frame[column].astype(str).to_numpy(dtype=object)
    return _label_silhouette(data.key, column, data.digest, data.X, values)


# ---- lineage beside behaviour: declared datasets against the neighbours ----------------------------------------

LINEAGE_COLUMNS = ("dataset", "datasets")  # labels that declare what a model was trained on (the first found)
LINEAGE_NEIGHBOURS = 5


@st.cache_data(show_spinner=False, max_entries=32)
def _lineage(key: str, column: str, k: int, digest: str, _frame: pd.DataFrame, _X: np.ndarray) -> pd.DataFrame:
    """The lineage check; kept on disk by the vectors' content and the declared values (it finds every model's
    nearest neighbours: ~15-40 s for 50,000 models on 2 cores)."""
    from core.map.lineage import lineage_disagreements

    labels = _labels_digest(column, _frame[column].astype(str).tolist(), k)
    path = _disk_file(f"{digest}-lineage-{labels}.parquet") if digest else None
    if path is not None and path.is_file():
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError):
            pass
    odd = lineage_disagreements(_frame, _X, column, k=k)
    if path is not None:
        buffer = io.BytesIO()
        odd.to_parquet(buffer, index=False)
        _keep_on_disk(path, buffer.getvalue())
    return odd


def lineage_check(data: PoolData) -> tuple[str, int, pd.DataFrame] | None:
    """(column, k, the models whose declared dataset differs from what most of their k closest models declare), or
    None when the pool declares no datasets to compare. k is 5, or one less than the usual number of models per
    dataset when that is smaller (3 models per dataset: each is checked against its 2 closest)."""
    column = next((c for c in LINEAGE_COLUMNS if c in data.frame.columns), None)
    if column is None:
        return None
    values = data.frame[column].astype(str)
    counts = values[values != ""].value_counts()
    if len(counts) < 2 or counts.sum() < 3:
        return None
    k = int(max(1, min(LINEAGE_NEIGHBOURS, np.median(counts) - 1)))
    return column, k, _lineage(data.key, column, k, data.digest, data.frame, data.X)
