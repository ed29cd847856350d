"""Fixtures for the app's tests: a small pool with vectors (the tiny models of tests/conftest.py, embedded once per
test session) and the environment variables that point the app at it, with a fresh user folder per test."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo-smollm2"       # the default zoo (core.zoo.DEMO_CATALOG)
PAGES = ["map.py", "find.py", "merge.py", "add_models.py", "how_it_works.py"]
TIMEOUT = 120  # seconds per AppTest run: the first one imports torch and compiles UMAP


@pytest.fixture(scope="session")
def app_pool(tiny_pool, tmp_path_factory) -> dict:
    """A catalog of the tiny models (absolute sources, so nothing is written beside the shared fixture) with its
    vectors.parquet, and an engine cache of its own."""
    from core.engine.embed import embed_catalog
    from core.pool.catalog import read_catalog, write_catalog
    from core.pool.vectors import write_vectors

    root = tmp_path_factory.mktemp("app_pool")
    cache = root / "cache"
    rows = [{"name": e.name, "source": str(e.source), "kind": e.kind, "base": str(e.base), **e.labels}
            for e in read_catalog(tiny_pool["catalog"])]
    catalog = write_catalog(rows, root / "pool" / "catalog.csv")
    result = embed_catalog(read_catalog(catalog), cache_dir=cache)
    assert not result.failures, result.failures
    write_vectors(result.table, catalog.with_name("vectors.parquet"), metadata=result.metadata)
    return {"catalog": catalog, "cache": cache, "models": tiny_pool["root"], "names": list(result.table["name"])}


@pytest.fixture
def app_env(app_pool, tmp_path, monkeypatch) -> dict:
    """Point the app at the small pool; the user's own models go to a fresh folder under tmp_path."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    env = {"DELTA_ATLAS_CATALOG": str(app_pool["catalog"]), "DELTA_ATLAS_DATA_DIR": str(tmp_path / "data"),
           "DELTA_ATLAS_USER_DIR": str(tmp_path / "user"), "DELTA_ATLAS_ALLOWED_ROOTS": str(allowed),
           "DELTA_ATLAS_CACHE": str(app_pool["cache"])}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {**app_pool, "env": env, "allowed": allowed, "user": tmp_path / "user"}


def copy_model(app_env: dict, name: str, to: str) -> Path:
    """A copy of one tiny model inside the allowed folder (as a user would place it)."""
    target = app_env["allowed"] / to
    shutil.copytree(app_env["models"] / name, target)
    return target


def demo_built() -> bool:
    return (DEMO / "catalog.csv").is_file() and (DEMO / "vectors.parquet").is_file()


@pytest.fixture
def demo_env(tmp_path, monkeypatch):
    """The real demo zoo (skipped until it is built), with a fresh user folder."""
    if not demo_built():
        pytest.skip("the demo zoo is not built (python -m core build-demo)")
    monkeypatch.delenv("DELTA_ATLAS_CATALOG", raising=False)
    monkeypatch.delenv("DELTA_ATLAS_DATA_DIR", raising=False)
    monkeypatch.setenv("DELTA_ATLAS_USER_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("DELTA_ATLAS_CACHE", str(tmp_path / "cache"))
    return tmp_path


def problems(at) -> list[str]:
    """Exceptions and error boxes in an AppTest run (the tests want none unless they say so)."""
    return [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]


os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")


DOMAINS = ("legal", "math", "medical", "commonsense", "coding")


def synthetic_pool(folder: Path, per_domain: int = 6, dim: int = 32, seed: int = 0) -> Path:
    """A catalog shaped like the demo zoo's (domain, variant, setting, mixture_of labels) with vectors only: enough
    for the Map and How-it-works pages, no model to load. Two mixtures are the sums of their parts (plus noise)."""
    import numpy as np

    from core.pool.catalog import write_catalog
    from core.pool.vectors import make_table, write_vectors

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(DOMAINS), dim))
    rows, vectors = [], []
    for d, domain in enumerate(DOMAINS):
        for i in range(per_domain):
            variant = "primary" if i < 3 else "robustness"
            rows.append({"name": f"{domain}-{i}", "source": f"./models/{domain}-{i}", "kind": "lora", "base": "./base",
                         "domain": domain, "variant": variant, "setting": "" if i < 3 else f"lr {i}e-4",
                         "mixture_of": ""})
            vectors.append(centres[d] + 0.3 * rng.normal(size=dim))
    for a, b in [("legal-0", "math-0"), ("medical-0", "coding-0")]:
        rows.append({"name": f"{a}+{b}", "source": "./models/mix", "kind": "lora", "base": "./base",
                     "domain": f"{a.split('-')[0]}+{b.split('-')[0]}", "variant": "mixture", "setting": "",
                     "mixture_of": f"{a}+{b}"})
        names = [r["name"] for r in rows]
        vectors.append(vectors[names.index(a)] + vectors[names.index(b)] + 0.1 * rng.normal(size=dim))
    folder.mkdir(parents=True, exist_ok=True)
    catalog = write_catalog(rows, folder / "catalog.csv")
    labels = pd.DataFrame(rows).drop(columns=["source", "kind", "base"])
    write_vectors(make_table([r["name"] for r in rows], np.asarray(vectors), labels), folder / "vectors.parquet")
    return catalog


@pytest.fixture
def synthetic_env(tmp_path, monkeypatch) -> Path:
    catalog = synthetic_pool(tmp_path / "pool")
    monkeypatch.setenv("DELTA_ATLAS_CATALOG", str(catalog))
    monkeypatch.setenv("DELTA_ATLAS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DELTA_ATLAS_USER_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("DELTA_ATLAS_CACHE", str(tmp_path / "cache"))
    return catalog


@pytest.fixture(autouse=True)
def server_like_page_mode(monkeypatch):
    """A real server leaves Streamlit's legacy ``pages/`` mode for good once app.py has called st.navigation;
    AppTest re-enters it on every run, so that a rerun would run the page without app.py (no sidebar, no
    navigation). Keep the server's behaviour in AppTest. (The legacy path itself is covered by the browser test,
    which opens a page by its URL first.)"""
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)
