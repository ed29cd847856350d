"""Every page renders (through app.py and on its own) and its main flow works, with Streamlit's AppTest."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.app.conftest import DEMO, PAGES, ROOT, TIMEOUT, copy_model, problems


def app(path: str = "app.py") -> AppTest:
    return AppTest.from_file(str(ROOT / path), default_timeout=TIMEOUT)


def chart_json(at, key: str) -> dict:
    """The figure of the plotly chart with ``key`` (AppTest does not model charts: read the proto)."""
    for element in at.get("plotly_chart"):
        if element.proto.id.endswith(key) or key in element.proto.id:
            return json.loads(element.proto.spec)
    raise AssertionError(f"no chart {key}: {[e.proto.id for e in at.get('plotly_chart')]}")


def plotly_numbers(values) -> list[float]:
    """A trace's coordinates as numbers: plotly sends numpy arrays as {"dtype", "bdata"} (base64)."""
    import base64

    import numpy as np

    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return [float(v) for v in values]


def test_every_page_renders_through_the_app(app_env):
    at = app().run()
    assert problems(at) == []
    assert at.title[0].value == "Map of the models"  # the home page
    assert at.sidebar.selectbox(key="catalog").value == str(app_env["catalog"])
    assert any("Computing on" in c.value for c in at.sidebar.caption)
    for page in PAGES:
        at.switch_page(f"pages/{page}").run()
        assert problems(at) == [], page
        assert at.title, page
        assert at.sidebar.selectbox(key="catalog").value == str(app_env["catalog"])  # drawn by app.py


def test_pages_folder_holds_only_the_apps_pages():
    """Streamlit serves every top-level file of pages/ at its own URL (/charts would be a blank page): helper
    modules live in pages/parts/."""
    navigation = (ROOT / "app.py").read_text()
    assert sorted(p.name for p in (ROOT / "pages").glob("*.py")) == sorted(PAGES)
    assert all(f'"pages/{page}"' in navigation for page in PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_its_own(app_env, page):
    at = app(f"pages/{page}").run()
    assert problems(at) == []
    assert at.title and at.sidebar.selectbox(key="catalog").value == str(app_env["catalog"])


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_the_demo_zoo(demo_env, page):
    at = app().run()
    at.switch_page(f"pages/{page}").run()
    assert problems(at) == []


def test_selecting_a_model_shows_its_neighbours(app_env):
    at = app().run()
    assert "Click a point" in at.info[0].value
    at.selectbox(key="map_search").set_value("lora_1").run()
    assert problems(at) == []
    assert at.subheader[0].value == "lora\\_1"                          # escaped: shown as text, not markdown
    neighbours = at.dataframe[1].value
    assert "lora_1" not in set(neighbours["name"]) and len(neighbours) == len(app_env["names"]) - 1
    assert list(neighbours["similarity"]) == sorted(neighbours["similarity"], reverse=True)
    figure = chart_json(at, "map_chart")
    assert any(trace["name"] == "selected" for trace in figure["data"])  # the model is ringed on the map
    at.button(key="map_to_merge").click().run()
    assert at.session_state["merge_candidates"]["names"][0] == "lora_1"


def test_map_settings_and_colours(app_env):
    at = app().run()
    at.selectbox(key="map_colour").set_value("Groups found automatically").run()
    assert any("groups (chosen automatically)" in c.value for c in at.caption)
    at.radio(key="map_layout").set_value("PCA").run()
    at.selectbox(key="map_filter_column").set_value("domain").run()
    at.multiselect(key="map_filter_values").set_value(["a"]).run()
    assert problems(at) == []
    assert any(c.value.startswith("3 of 6 models shown") for c in at.caption)
    assert any("faithful" in m.value or "Too few" in m.value for m in at.markdown)
    downloads = [b.proto.label for b in at.get("download_button")]
    assert downloads[:3] == ["Vectors (CSV)", "Vectors (Parquet)", "Map (interactive HTML)"]


def test_chart_selection_is_read_by_name():
    from pages.parts.ui import names_from_event

    event = {"selection": {"points": [{"customdata": ["a"]}, {"customdata": ["b"]}, {"x": 1}, {"customdata": ["a"]}]}}
    assert names_from_event(event) == ["a", "b"]  # the star (no customdata) and repeats are skipped
    assert names_from_event(None) == [] and names_from_event({"selection": {}}) == []


def test_sample_task_ranks_models_and_measures_whether_they_help(app_env):
    at = app().run()
    at.switch_page("pages/find.py").run()
    at.number_input(key="find_steps").set_value(2).run()
    at.button(key="find_go").click().run()
    assert problems(at) == []
    matches = at.dataframe[-1].value
    assert set(matches["model"]) == set(app_env["names"])
    assert list(matches["similarity"]) == sorted(matches["similarity"], reverse=True)
    helps = list(matches["helps with your examples?"])
    assert all(h != "not checked" for h in helps[:5]) and all(h == "not checked" for h in helps[5:])
    counts = list(matches["better on"])              # how many examples each measured model beat the base on
    n = len(at.session_state["task"]["examples"])
    assert all(c.endswith(f" of {n}") and 0 <= int(c.split()[0]) <= n for c in counts[:5]) and not any(counts[5:])
    task = at.session_state["task"]["result"]
    assert task.verdict in ("strong", "weak", "none") and task.gains is not None
    figure = chart_json(at, "find_map")
    assert any("your task" in t["name"] and t["marker"]["symbol"] == "star" for t in figure["data"])
    label = next(a for a in figure["layout"]["annotations"] if "your task" in a["text"])
    assert label["showarrow"] and abs(label["ax"]) > 20 and abs(label["ay"]) > 20   # beside the star, not on the points
    at.switch_page("pages/merge.py").run()
    assert problems(at) == []
    from core.pool.catalog import read_catalog
    from core.reuse.fit import merge_candidates

    helping, _ = merge_candidates(task.gains, read_catalog(app_env["catalog"]))
    assert at.multiselect(key="merge_names").value == helping[:3]       # only models that help, never the top 3 blind
    assert at.radio(key="merge_source").value == "The examples of my last task search"


def remembered_task(app_env, verdict: str, gains: list[tuple[str, float | None]]):
    """A finished search put into the session as the Find page keeps it, with the given measured gains."""
    import numpy as np

    from core.pool.vectors import read_vectors
    from core.reuse.fit import HELP_MARGIN, gain_short, gain_words
    from core.reuse.task import match_task

    table = read_vectors(app_env["catalog"].with_name("vectors.parquet"))
    frame = pd.DataFrame([{"name": n, "loss": None if g is None else 2.0 * (1 - g), "base_loss": 2.0, "gain": g,
                           "helps": g is not None and g >= HELP_MARGIN, "verdict": "", "words": gain_words(g),
                           "short": gain_short(g),
                           "note": "" if g is not None else "its weights are not on this machine"}
                          for n, g in gains])
    result = match_task(np.asarray(table["vector"].iloc[0], np.float32), table, gains=frame)
    result.close = verdict != "none"
    from core.reuse.task import conclude

    conclude(result)
    assert result.verdict == verdict
    examples = [{"instruction": "a", "response": "b"}] * 3
    return {"catalog": str(app_env["catalog"]), "token": verdict, "title": "My task", "examples": examples,
            "result": result}


def test_nothing_fits_view_says_so_offers_no_merge_and_draws_the_task_apart(app_env):
    at = app("pages/find.py")
    at.session_state["task"] = remembered_task(app_env, "none", [("lora_0", -0.2), ("lora_1", 0.0)])
    at.run()
    assert problems(at) == []
    assert any("Nothing in this pool fits your task" in w.value for w in at.warning)
    assert any("least bad" in m.value for m in at.markdown)
    assert not [b for b in at.button if b.key == "find_to_merge"]
    assert any("no merge is offered" in i.value for i in at.info)
    figure = chart_json(at, "find_map")["data"]
    star = next(t for t in figure if t["name"] == "your task (fits no group)")
    points = [x for t in figure if t["name"] != star["name"] for x in plotly_numbers(t["x"])]
    assert plotly_numbers(star["x"])[0] > max(points)                   # beside the map, not inside a cluster


def test_merge_hand_over_sends_exactly_the_models_that_help(app_env):
    at = app()
    at.session_state["task"] = remembered_task(
        app_env, "strong", [("lora_0", 0.2), ("full_0", 0.3), ("lora_1", -0.1), ("lora_2", 0.05)])
    at.run()
    at.switch_page("pages/find.py").run()
    assert problems(at) == []
    assert any(s.value.startswith("Strong match") for s in at.success)
    left_out = next(c.value for c in at.caption if c.value.startswith("Left out of a merge"))
    assert "full\\_0" in left_out and "full finetune" in left_out and "does not help" in left_out
    button = next(b for b in at.button if b.key == "find_to_merge")
    assert button.label == "Merge the 2 models that help"
    button.click().run()
    at.switch_page("pages/merge.py").run()
    assert at.multiselect(key="merge_names").value == ["lora_0", "lora_2"]


def test_domain_lens_setting_says_plainly_when_the_pool_cannot_use_it(app_env):
    at = app("pages/find.py").run()
    assert at.radio(key="find_compare").value == "delta"           # the paper's method stays the default
    at.number_input(key="find_steps").set_value(2).run()
    at.radio(key="find_compare").set_value("domain-lens").run()
    at.button(key="find_go").click().run()
    assert len(at.exception) == 0
    assert any("at least 3 domains" in str(e.value) for e in at.error)  # the app pool has fewer: what to do instead


def test_bad_examples_get_a_clear_message(app_env):
    at = app("pages/find.py").run()
    at.radio(key="find_source").set_value("Upload my own examples").run()
    at.file_uploader(key="find_upload").upload("task.jsonl", b'{"instruction": "hi", "response": "ho"}\n',
                                               "application/json").run()
    assert len(at.exception) == 0
    assert "at least 2" in at.error[0].value
    assert at.button(key="find_go").disabled


def test_merging_two_adapters_shows_results(app_env):
    at = app("pages/merge.py").run()
    at.multiselect(key="merge_names").set_value(["lora_0", "lora_1"]).run()
    at.radio(key="merge_weights").set_value("By hand").run()
    at.button(key="merge_go").click().run()
    assert problems(at) == []
    assert at.subheader[0].value == "The merge of lora\\_0, lora\\_1"            # names escaped: shown as text
    dots = chart_json(at, "merge_losses")["data"][-1]  # one dot per model, base at the top
    assert list(dots["y"]) == ["merged", "lora_1", "lora_0", "base"] and len(dots["x"]) == 4
    marks = {t["name"] for t in chart_json(at, "merge_map")["data"]}
    assert {"predicted", "merged"} <= marks
    assert [b.proto.label for b in at.get("download_button")] == ["Merged adapter (zip)", "Recipe (YAML)"]


def test_added_local_model_appears_on_the_map(app_env):
    folder = copy_model(app_env, "lora_2", "my-adapter")
    at = app().run()
    at.switch_page("pages/add_models.py").run()
    at.text_input(key="add_folder").set_value(str(folder)).run()
    at.text_input(key="add_domain").set_value("b").run()
    at.button(key="add_go").click().run()
    assert problems(at) == []
    assert "my\\-adapter" in at.success[0].value                        # escaped: shown as text
    rows = pd.read_csv(app_env["user"] / "catalog.csv")
    assert list(rows["name"]) == ["my-adapter"] and list(rows["domain"]) == ["b"]
    at.switch_page("pages/map.py").run()
    assert problems(at) == []
    assert at.subheader[0].value == "my\\-adapter"  # selected on the map after adding (escaped: shown as text)
    assert any(m.value.startswith("**What it learned**") for m in at.markdown)   # described when it was added
    assert "Where it came from" in at.selectbox(key="map_colour").options
    figure = chart_json(at, "map_chart")
    assert any(s == "diamond" for t in figure["data"] for s in (t["marker"].get("symbol") or []))


def test_paths_outside_the_allowed_folders_are_refused(app_env, tmp_path):
    outside = copy_model({**app_env, "allowed": tmp_path}, "lora_3", "elsewhere")
    at = app("pages/add_models.py").run()
    at.text_input(key="add_folder").set_value(str(outside)).run()
    at.button(key="add_go").click().run()
    assert len(at.exception) == 0
    assert "outside the folders" in at.error[0].value
    assert not (app_env["user"] / "catalog.csv").exists()


def test_a_broken_catalog_is_a_message_not_a_traceback(app_env, tmp_path, monkeypatch):
    broken = tmp_path / "broken" / "catalog.csv"
    broken.parent.mkdir()
    broken.write_text("name,source\nx,./x\n")
    monkeypatch.setenv("DELTA_ATLAS_CATALOG", str(broken))
    at = app().run()
    assert len(at.exception) == 0
    assert any("missing column" in e.value for e in at.error)


def test_a_busy_model_is_shown_in_the_sidebar(app_env):
    import threading

    from pages.parts import ui as _ui

    gate = threading.Event()
    job = _ui.job_queue().submit(str(app_env["models"] / "base"), "search", "someone-else",
                                 lambda progress: gate.wait(120))   # the gate opens at the end; a first run is slow
    try:
        at = app().run()
        assert any("Busy: 1 running, 0 waiting (search)" in c.value for c in at.sidebar.caption)
    finally:
        gate.set()
        _ui.job_queue().wait(job.id, timeout=10)


@pytest.mark.parametrize("sessions", [1, 2, None])
def test_a_job_takes_every_core_only_while_it_is_alone_with_one_person(app_env, monkeypatch, sessions):
    """Two jobs wait behind a running one: the first starts with the other waiting (a core left to the pages), the
    last alone, with every core where one browser session is connected; a second person connecting mid-job takes
    the core back at the job's next progress report. Outside a server (None) the jobs always leave a core."""
    import threading

    import torch

    from core.engine.device import JOB_THREADS_ENV, job_threads
    from core.progress import Progress
    from pages.parts import jobs as _jobs
    from pages.parts import ui as _ui

    monkeypatch.delenv(JOB_THREADS_ENV, raising=False)
    connected = {"now": sessions}
    monkeypatch.setattr(_jobs, "connected_sessions", lambda: connected["now"])
    before, gate, seen = torch.get_num_threads(), threading.Event(), {}

    def record(name):
        def work(progress):
            seen[name] = torch.get_num_threads()
            if name == "last" and connected["now"] == 1:
                connected["now"] = 2                    # someone else opens the app
                progress(Progress(1, 2, "finetune"))
                seen["after a second person came"] = torch.get_num_threads()
        return _jobs.with_job_threads(work)

    key = str(app_env["models"] / "base")
    try:
        jobs = [_ui.job_queue().submit(key, "search", "someone", lambda progress: gate.wait(60))]
        jobs += [_ui.job_queue().submit(key, "search", "someone", record(name)) for name in ("first", "last")]
        gate.set()
        for job in jobs:
            assert _ui.job_queue().wait(job.id, timeout=30).state == "done"
    finally:
        gate.set()
        torch.set_num_threads(before)
    expected = {"first": job_threads(False), "last": job_threads(sessions == 1)}
    if sessions == 1:
        expected["after a second person came"] = job_threads(False)
    assert seen == expected
    assert job_threads(True) == (os.cpu_count() or 1)


def test_a_search_waits_its_turn_and_survives_a_reload(app_env):
    """A second user's search queues behind the first (and says so), and a new session opened with the job's id in
    the URL (a reloaded tab) gets its result."""
    import threading

    from pages.parts import ui as _ui

    gate = threading.Event()
    at = app().run()
    at.switch_page("pages/find.py").run()
    at.number_input(key="find_steps").set_value(2).run()
    samples = at.selectbox(key="find_sample").options
    at.selectbox(key="find_sample").set_value(samples[-1]).run()   # not the first: the reload must put it back
    base = _ui.job_queue().submit(str(app_env["models"] / "base"), "search", "someone-else",
                                  lambda progress: gate.wait(20))
    timer = threading.Timer(2.0, gate.set)      # the other search ends while ours waits behind it
    timer.start()
    at.button(key="find_go").click().run(timeout=60)
    timer.join()
    assert problems(at) == []
    job_id = at.session_state["find_job"]
    assert at.query_params["find_job"] == job_id
    first = at.dataframe[-1].value
    assert _ui.job_queue().get(job_id).started > _ui.job_queue().get(base.id).finished - 0.01
    reloaded = app()
    reloaded.query_params["find_job"] = job_id
    reloaded.run()
    reloaded.switch_page("pages/find.py").run()
    assert problems(reloaded) == []
    assert list(reloaded.dataframe[-1].value["model"]) == list(first["model"])
    assert reloaded.selectbox(key="find_sample").value == samples[-1]   # the form shows what the result is of
    assert reloaded.number_input(key="find_steps").value == 2


def test_how_it_works_shows_the_evidence(synthetic_env):
    at = app("pages/how_it_works.py").run()
    assert problems(at) == []
    headers = [h.value for h in at.subheader]
    assert any("A and B lands near A + B" in h for h in headers) and any("same place" in h for h in headers)
    additive = at.dataframe[1].value
    assert list(additive["model trained on both"]) == ["legal-0+math-0", "medical-0+coding-0"]
    assert (additive["similarity to A + B"] > 0.9).all()  # built as sums, so they must read as additive
    assert any("for **2 of the 2** models trained on two kinds of data" in m.value for m in at.markdown)
    grouping = next(m.value for m in at.markdown if "should come out close together" in m.value)
    assert "the most similar other model learned the same domain" in grouping    # plain words first...
    assert "silhouette" not in " ".join(m.value for m in at.markdown).lower()       # ...the jargon in the details
    assert any("silhouette score measures" in c.value for c in at.caption)


@pytest.mark.parametrize("loss_on", ["response", "text"])
def test_how_it_works_says_how_the_pools_models_learned(synthetic_env, loss_on):
    from core.reuse.train import Recipe

    folder = synthetic_env.parent
    (folder / "recipe.json").write_text(json.dumps(Recipe(loss_on=loss_on).to_json()))
    (folder / "search_quality.json").write_text(json.dumps(
        {"loss_on": {"about": "a copy trained both ways", "text": "17/30", "response": "11/30"}}))
    at = app("pages/how_it_works.py").run()
    assert problems(at) == []
    text = " ".join(m.value for m in at.markdown)
    if loss_on == "text":
        assert "whole of each example" in text and "**17/30** this way, against 11/30" in text
    else:
        assert "from the answers of its examples only" in text and "whole of each example" not in text


def test_map_groups_found_automatically(synthetic_env):
    at = app().run()
    at.selectbox(key="map_colour").set_value("Groups found automatically").run()
    assert problems(at) == []
    assert any("5 groups (chosen automatically)" in c.value for c in at.caption)
    legend = {t["name"] for t in chart_json(at, "map_chart")["data"]}
    assert {f"group {i}" for i in range(1, 6)} <= legend
    assert any("domain** form clearly separate groups" in m.value for m in at.markdown)


def test_an_uploaded_zip_joins_the_user_catalog(app_env):
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in (app_env["models"] / "lora_3").iterdir():
            archive.write(path, f"uploaded/{path.name}")
    at = app("pages/add_models.py").run()
    at.radio(key="add_how").set_value("Upload a zip").run()
    at.file_uploader(key="add_zip").upload("uploaded.zip", buffer.getvalue(), "application/zip").run()
    at.button(key="add_go").click().run()
    assert problems(at) == []
    assert "uploaded" in at.success[0].value
    assert (app_env["user"] / "models" / "uploaded" / "adapter_config.json").is_file()
    at.selectbox(key="add_remove_name").set_value("uploaded").run()
    at.button(key="add_remove").click().run()
    assert not (app_env["user"] / "models" / "uploaded").exists()


def test_switching_pools_keeps_every_page_working(app_env, tmp_path, monkeypatch):
    from tests.app.conftest import synthetic_pool

    other = synthetic_pool(tmp_path / "data" / "other", per_domain=3)
    at = app().run()
    assert at.sidebar.selectbox(key="catalog").options == ["pool", "other"]  # named by their folders
    at.selectbox(key="map_search").set_value("lora_0").run()
    at.switch_page("pages/merge.py").run()
    at.multiselect(key="merge_names").set_value(["lora_0", "lora_1"]).run()
    at.sidebar.selectbox(key="catalog").set_value(str(other)).run()
    assert problems(at) == []
    assert at.multiselect(key="merge_names").value == []
    for page in PAGES:
        at.switch_page(f"pages/{page}").run()
        assert problems(at) == [], page


def test_no_catalog_at_all_says_how_to_build_the_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTA_ATLAS_CATALOG", str(tmp_path / "nothing" / "catalog.csv"))
    monkeypatch.setenv("DELTA_ATLAS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DELTA_ATLAS_USER_DIR", str(tmp_path / "user"))
    monkeypatch.setattr("pages.parts.pools.DEMO_CATALOG", tmp_path / "nothing" / "catalog.csv")
    at = app().run()
    assert len(at.exception) == 0
    assert any("build-demo" in w.value for w in at.sidebar.warning)
    assert any("demo zoo is not built" in e.value for e in at.error)


SMOLLM2 = DEMO / "catalog.csv"      # the default zoo, opened here by its path as a user would pick it


@pytest.mark.skipif(not (SMOLLM2.parent / "vectors.parquet").is_file(), reason="the SmolLM2 zoo is not built")
@pytest.mark.parametrize("page", ["map.py", "how_it_works.py"])
def test_the_smollm2_zoo_opens_by_its_title_with_its_figures(demo_env, monkeypatch, page):
    monkeypatch.setenv("DELTA_ATLAS_CATALOG", str(SMOLLM2))
    at = app().run()
    at.switch_page(f"pages/{page}").run()
    assert problems(at) == []
    assert at.sidebar.selectbox(key="catalog").value == str(SMOLLM2)
    if page == "how_it_works.py":
        text = " ".join(m.value for m in at.markdown)
        assert "SmolLM2-135M demo zoo" in text and "written by hand" in text
        assert "whole of each example" in text            # its recipe.json: loss_on "text"


HOSTILE = ['<a href="https://evil.example">click</a>', "**loud** [link](https://evil.example)", "<b>bold</b>", "$x^2$"]


@pytest.fixture
def hostile_env(app_env, tmp_path, monkeypatch):
    """The app pool with labels a visitor or a catalog could carry: HTML, markdown links, formulas."""
    from core.pool.catalog import read_catalog, write_catalog
    from core.pool.vectors import read_vectors, write_vectors

    rows = [{"name": e.name, "source": str(e.source), "kind": e.kind, "base": str(e.base),
             "domain": HOSTILE[i % len(HOSTILE)]} for i, e in enumerate(read_catalog(app_env["catalog"]))]
    catalog = write_catalog(rows, tmp_path / "hostile" / "catalog.csv")
    table = read_vectors(app_env["catalog"].with_name("vectors.parquet"))
    table["domain"] = table["name"].map({r["name"]: r["domain"] for r in rows})
    write_vectors(table, catalog.with_name("vectors.parquet"))
    monkeypatch.setenv("DELTA_ATLAS_CATALOG", str(catalog))
    return {**app_env, "catalog": catalog}


def test_hostile_labels_are_shown_as_text_on_the_map(hostile_env):
    at = app("pages/map.py").run()
    assert problems(at) == []
    figure = chart_json(at, "map")
    shown = json.dumps([{k: t.get(k) for k in ("name", "hovertemplate", "hovertext", "customdata")}
                        for t in figure["data"]]) + json.dumps(figure["layout"].get("legend", {}))
    assert "<a href" not in shown and "<b>bold</b>" not in shown
    assert "&lt;a href=" in shown                                      # there, as its own characters
    markdown = " ".join(e.value for kind in ("markdown", "caption", "success", "info", "warning")
                        for e in at.get(kind))
    assert "[link](https" not in markdown and "**loud**" not in markdown


@pytest.mark.parametrize("kind", ["identical", "zero", "width-1"])
def test_a_degenerate_pool_draws_a_map_with_a_plain_note(app_env, tmp_path, monkeypatch, kind):
    """Vectors that all point one way (or nowhere) sit on one point: a note, never a traceback."""
    import numpy as np

    from core.pool.catalog import read_catalog, write_catalog
    from core.pool.vectors import make_table, write_vectors

    entries = list(read_catalog(app_env["catalog"]))
    rows = [{"name": e.name, "source": str(e.source), "kind": e.kind, "base": str(e.base), "domain": "ab"[i % 2]}
            for i, e in enumerate(entries)]
    catalog = write_catalog(rows, tmp_path / kind / "catalog.csv")
    X = {"identical": np.ones((len(rows), 8)), "zero": np.zeros((len(rows), 8)),
         "width-1": np.arange(1.0, len(rows) + 1)[:, None]}[kind]
    write_vectors(make_table([r["name"] for r in rows], X), catalog.with_name("vectors.parquet"))
    monkeypatch.setenv("DELTA_ATLAS_CATALOG", str(catalog))
    at = app("pages/map.py").run()
    assert problems(at) == [] and len(at.exception) == 0
    shown = " ".join(e.value for kind_ in ("markdown", "caption", "info", "warning") for e in at.get(kind_))
    assert "sit on one point of the map" in shown


def test_a_vector_file_of_another_catalog_is_a_message(app_env, tmp_path, monkeypatch):
    from core.pool.catalog import read_catalog, write_catalog
    from core.pool.vectors import read_vectors, write_vectors

    entries = list(read_catalog(app_env["catalog"]))
    rows = [{"name": e.name, "source": str(e.source), "kind": e.kind, "base": str(e.base)} for e in entries[:-1]]
    catalog = write_catalog(rows, tmp_path / "short" / "catalog.csv")        # one model fewer than the vectors
    write_vectors(read_vectors(app_env["catalog"].with_name("vectors.parquet")), catalog.with_name("vectors.parquet"))
    monkeypatch.setenv("DELTA_ATLAS_CATALOG", str(catalog))
    at = app("pages/map.py").run()
    assert len(at.exception) == 0
    assert any(f"'{entries[-1].name}'" in e.value and "made for another catalog" in e.value for e in at.error)


def map_points(at) -> dict[str, tuple[float, float]]:
    """Every model's place on the Map page's chart, by name (customdata[0] of each point)."""
    points = {}
    for trace in chart_json(at, "map_chart")["data"]:
        names = [row[0] if isinstance(row, list) else row for row in trace.get("customdata") or []]
        for name, x, y in zip(names, plotly_numbers(trace.get("x", [])), plotly_numbers(trace.get("y", []))):
            points[name] = (x, y)
    return points


def test_a_model_added_in_one_session_does_not_move_anyone_elses_map(app_env):
    first = app("pages/map.py").run()                       # a visitor looking at the map
    before = map_points(first)
    assert problems(first) == [] and len(before) >= 4
    other = app().run()                                     # another visitor adds a model
    other.switch_page("pages/add_models.py").run()
    other.text_input(key="add_folder").set_value(str(copy_model(app_env, "lora_2", "added-later"))).run()
    other.button(key="add_go").click().run()
    assert problems(other) == []
    for at in (first.run(), app("pages/map.py").run()):     # the first visitor's next rerun, and a new visitor
        after = map_points(at)
        assert "added-later" in after
        assert same_places(after, before)                   # every pool model where it was
        assert any("placed on this pool's map" in c.value for c in at.caption)
    refit = app("pages/map.py").run()                       # re-drawing around every model is one visitor's choice
    refit.toggle(key="map_refit").set_value(True).run()
    assert problems(refit) == [] and "added-later" in map_points(refit)
    assert same_places(map_points(app("pages/map.py").run()), {**before, "added-later": after["added-later"]})


def same_places(now: dict, then: dict) -> bool:
    import numpy as np

    return set(then) <= set(now) and np.allclose([now[n] for n in then], [then[n] for n in then], atol=1e-6)


def test_a_model_shows_what_it_learned_and_groups_have_names(app_env):
    from core.engine.pool_vectors import pool_vectors
    from core.map.describe import describe_pool, descriptions_path, write_descriptions
    from core.pool.catalog import read_catalog

    catalog = read_catalog(app_env["catalog"])
    found = describe_pool(catalog, pool_vectors(catalog)[0])
    found["models"]["lora_1"]["words"] = ["<b>court</b>", "clause"]           # hostile text stays text
    write_descriptions(catalog.path, found)
    try:
        at = app().run()
        at.selectbox(key="map_search").set_value("lora_1").run()
        assert problems(at) == []
        learned = [m.value for m in at.markdown if m.value.startswith("**What it learned**")]
        assert learned and "\\<b\\>court\\</b\\>" in learned[0].replace("&lt;", "\\<")
        said = [m.value for m in at.markdown if m.value[:3] in {f"**{i}" for i in range(1, 6)}]
        assert len(said) == 5
        assert sum(c.value.startswith("base model: ") for c in at.caption) == len(found["base"]["answers"])
        hover = json.dumps(chart_json(at, "map_chart")["data"])
        assert "leans towards" in hover and "&lt;b&gt;court" in hover and "<b>court" not in hover
        at.selectbox(key="map_compare").set_value("lora_2").run()            # two models side by side
        assert problems(at) == []
        assert [m.value for m in at.markdown if m.value.endswith(" says**")] == ["**What lora\\_1 says**",
                                                                                  "**What lora\\_2 says**"]
        for i in range(1, 6):  # each prompt: lora_1's answer in its own panel, then both models side by side
            assert sum(m.value.startswith(f"**{i}.**") for m in at.markdown) == 3
        at.selectbox(key="map_colour").set_value("Groups found automatically").run()
        assert any("groups named by the words their models lean towards" in c.value for c in at.caption)
    finally:
        descriptions_path(catalog.path).unlink()


def test_a_pool_not_described_yet_says_how_to_describe_it(app_env):
    at = app().run()
    at.selectbox(key="map_search").set_value("lora_1").run()
    assert any("python -m core describe" in c.value for c in at.caption)


def test_how_it_works_says_how_often_nothing_fits_was_said_rightly_and_wrongly(synthetic_env):
    from core.pool.folder import quality_key

    (synthetic_env.parent / "search_quality.json").write_text(json.dumps({
        "default_compare": "delta", quality_key("ood", "delta"): {"tasks": 30, "top1": "27/30", "in_flagged": "2/30"},
        "off": {"tasks": 13, "flagged": "12/13"}}))
    at = app("pages/how_it_works.py").run()
    assert problems(at) == []
    text = next(m.value for m in at.markdown if "When you bring your own task" in m.value)
    assert "**12/13** (the other one got a *weak match*" in text and "wrongly for **2/30**" in text


def test_how_it_works_says_how_often_helps_held_on_other_examples(synthetic_env):
    from core.pool.folder import quality_key

    (synthetic_env.parent / "search_quality.json").write_text(json.dumps({
        "default_compare": "delta", quality_key("ood", "delta"): {"tasks": 30, "top1": "27/30", "in_flagged": "2/30"},
        "help_check": {"margin": 0.03, "share": 0.0, "splits": 200, "dev_held": 0.863, "ood_held": 0.921}}))
    at = app("pages/how_it_works.py").run()
    assert problems(at) == []
    text = next(m.value for m in at.markdown if "Is *helps* true?" in m.value)
    assert "**92%** of the time on the tasks written by hand (86% on the tasks used to choose settings)" in text


def test_how_it_works_reports_the_tasks_written_after_the_settings_too(synthetic_env):
    from core.pool.folder import quality_key

    (synthetic_env.parent / "search_quality.json").write_text(json.dumps({
        "default_compare": "delta", quality_key("ood", "delta"): {"tasks": 30, "top1": "27/30", "in_flagged": "2/30"},
        "off": {"tasks": 13, "flagged": "11/13"}, "off_fresh": {"tasks": 5, "flagged": "2/5"},
        quality_key("fresh", "delta"): {"tasks": 5, "top1": "5/5", "in_flagged": "0/5"}}))
    at = app("pages/how_it_works.py").run()
    assert problems(at) == []
    plain = next(m.value for m in at.markdown if "When you bring your own task" in m.value)
    assert "On **5 more such tasks written later**, it said so for only **2/5**." in plain
    details = next(m.value for m in at.markdown if "written after every setting was fixed" in m.value)
    assert "**5/5**" in details and "was said for **2/5**" in details and "*strong match*" in details
