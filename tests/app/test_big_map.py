"""Big pools on the map (issue #10): the figure draws with WebGL and stays small, every point still carries its
model's name for selections, and the map's slow results are kept on disk for a restarted server.
bench/bench_map.py --n 50000 measures the speed; these tests check the behaviour, on 5,000 models."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.io as pio
import pytest

from pages.parts import charts
from tests.app.conftest import ROOT, problems

N = 5000
DOMAINS = ("legal", "math", "medical", "commonsense", "coding")


def big_frame(n: int = N, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """n models in five domains: labels (one of them empty for some models), vectors [n, 16] and map points."""
    rng = np.random.default_rng(seed)
    domain = rng.integers(0, len(DOMAINS), size=n)
    frame = pd.DataFrame({"name": [f"model-{i:05d}" for i in range(n)], "domain": [DOMAINS[d] for d in domain],
                          "dataset": [f"{DOMAINS[d]}-{i % 2}" for i, d in enumerate(domain)],
                          "setting": ["" if i % 3 == 0 else f"lr {i % 3}e-4" for i in range(n)], "origin": "pool"})
    vectors = rng.normal(size=(len(DOMAINS), 16))[domain] + 0.3 * rng.normal(size=(n, 16))
    points = rng.normal(size=(len(DOMAINS), 2))[domain] * 5 + rng.normal(size=(n, 2))
    return frame, vectors.astype(np.float32), points


def test_a_big_map_is_webgl_and_every_point_carries_its_name():
    frame, _, points = big_frame()
    focus = list(frame["name"][:2000])                                   # a lasso around 2,000 models
    fig = charts.map_figure(frame, points, list(frame["domain"]), "domain", focus=focus,
                            hover_columns=["domain", "dataset", "setting"])
    models = [t for t in fig.data if t.name != "selected"]
    assert {t.type for t in fig.data} == {"scattergl"}                   # the rings of 2,000 models too
    names = [row[0] for t in models for row in t.customdata]
    assert sorted(names) == sorted(frame["name"])                         # customdata[0]: what a selection returns
    ring = next(t for t in fig.data if t.name == "selected")
    assert [row[0] for row in ring.customdata] == focus
    coding = next(t for t in models if t.name == "coding")
    # the group's shared label is written once; the others travel per point, '–' where a model has none
    assert coding.hovertemplate == ("<b>%{customdata[0]}</b><br>domain: coding<br>dataset: %{customdata[1]}"
                                    "<br>setting: %{customdata[2]}<extra></extra>")
    first = frame[frame["domain"] == "coding"].iloc[0]
    assert list(coding.customdata[0]) == [first["name"], first["dataset"], first["setting"] or "–"]
    assert coding.hovertext is None and coding.marker.symbol == "circle"  # no per-point strings for 5,000 models
    spec = pio.to_json(fig, validate=False)
    texts = charts.hover_texts(frame, ["domain", "dataset", "setting"])   # one ready string per model, as before
    old = pio.to_json(charts.map_figure(frame, points, list(frame["domain"]), "domain", texts, focus=focus))
    assert len(spec) < 0.6 * len(old)
    assert json.loads(spec)["data"][0]["x"]["dtype"] == "f4"             # coordinates as float32, base64


def test_small_maps_stay_svg_and_ready_hover_texts_still_work():
    frame, _, points = big_frame(60)
    texts = charts.hover_texts(frame, ["domain", "setting"])
    fig = charts.map_figure(frame, points, list(frame["domain"]), "domain", texts, focus=["model-00001"])
    assert {t.type for t in fig.data} == {"scatter"}
    assert all(t.hovertemplate == "%{hovertext}<extra></extra>" for t in fig.data)
    assert {row[0] for t in fig.data[:-1] for row in t.customdata} == set(frame["name"])
    # the legend reads in order, while the biggest group is drawn first (small groups stay on top)
    sizes = frame["domain"].value_counts()
    assert [t.name for t in fig.data[:-1]] == list(sizes.index)
    assert [t.name for t in sorted(fig.data[:-1], key=lambda t: t.legendrank)] == sorted(DOMAINS)


def test_hover_fields():
    names = np.array(["a", "b", "c"], dtype=object)
    labels = {"domain": np.array(["x", "x", "x"], dtype=object), "setting": np.array(["", "1", "2"], dtype=object),
              "note": np.array(["", "", ""], dtype=object), "odd": np.array(["%{y}", "%{y}", "%{y}"], dtype=object)}
    customdata, template = charts.hover_fields(names, labels)
    assert template == ("<b>%{customdata[0]}</b><br>domain: x<br>setting: %{customdata[1]}"
                        "<br>odd: %{customdata[2]}<extra></extra>")      # no empty 'note'; '%{' never in the template
    assert customdata.tolist() == [["a", "–", "%{y}"], ["b", "1", "%{y}"], ["c", "2", "%{y}"]]


def write_pool(folder, n: int = N):
    from core.pool.catalog import write_catalog
    from core.pool.vectors import make_table, write_vectors

    frame, vectors, _ = big_frame(n)
    rows = [{"name": r["name"], "source": f"./models/{r['name']}", "kind": "lora", "base": "./base",
             "domain": r["domain"], "dataset": r["dataset"], "setting": r["setting"]} for _, r in frame.iterrows()]
    catalog = write_catalog(rows, folder / "catalog.csv")
    write_vectors(make_table(list(frame["name"]), vectors, frame.drop(columns=["origin"])), folder / "vectors.parquet")
    return catalog


@pytest.fixture
def big_env(tmp_path, monkeypatch):
    catalog = write_pool(tmp_path / "pool")
    for key, value in {"DELTA_ATLAS_CATALOG": catalog, "DELTA_ATLAS_DATA_DIR": tmp_path / "data",
                       "DELTA_ATLAS_USER_DIR": tmp_path / "user", "DELTA_ATLAS_CACHE": tmp_path / "cache"}.items():
        monkeypatch.setenv(key, str(value))
    return tmp_path


def test_the_map_page_draws_5000_models_with_webgl(big_env):
    from streamlit.testing.v1 import AppTest

    from tests.app.test_pages import chart_json

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["map_settings"] = {"layout": "PCA"}                 # UMAP's fit is the bench's business
    at.run()
    assert problems(at) == []
    figure = chart_json(at, "map_chart")
    assert {t["type"] for t in figure["data"]} == {"scattergl"}
    assert sum(len(t["customdata"]) for t in figure["data"]) == N
    assert any(c.value.startswith("5,000 of 5,000 models shown") for c in at.caption)
    at.selectbox(key="map_search").set_value("model-01234").run()       # the search box finds one of 5,000
    assert at.subheader[0].value == "model\\-01234" and problems(at) == []   # escaped: shown as text
    ringed = next(t for t in chart_json(at, "map_chart")["data"] if t["name"] == "selected")
    assert ringed["customdata"][0][0] == "model-01234"


def test_slow_map_results_are_kept_on_disk(big_env, monkeypatch):
    """Clusters, the lineage check, quality and label silhouettes come back from disk after a restart (caches
    cleared) without being computed again."""
    import streamlit as st

    import core.map.clusters as clusters
    import core.map.lineage as lineage
    import core.map.projection as projection
    from pages.parts import pools

    pool = pools.Pool(big_env / "pool" / "catalog.csv", big_env / "pool" / "vectors.parquet", "big")
    data = pools.pool_data(pool)
    embedding = np.asarray(data.X[:, :2], dtype=np.float64)
    settings = {"layout": "PCA", "neighbours": "auto", "seed": 0}
    first = (pools.clusters(data), pools.lineage_check(data), pools.quality(data, embedding, settings),
             pools.label_silhouette(data, "domain"))
    kept = sorted(path.name.split("-")[1] for path in (big_env / "cache" / "maps").iterdir())
    assert kept == ["clusters", "lineage", "quality", "silhouette"]
    st.cache_data.clear()

    def refuse(*args, **kwargs):
        raise AssertionError("computed again instead of read from disk")

    for module, name in ((lineage, "lineage_disagreements"), (projection, "map_quality"),
                         (clusters, "label_silhouette")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(clusters.Clusterer, "fit", refuse)
    again = (pools.clusters(data), pools.lineage_check(data), pools.quality(data, embedding, settings),
             pools.label_silhouette(data, "domain"))
    assert again[0] == first[0] and again[2] == first[2] and again[3] == first[3]
    assert again[1][:2] == first[1][:2] and again[1][2].equals(first[1][2])
