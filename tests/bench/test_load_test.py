"""bench/load_test.py in small: 3 map sessions and 1 task search (2 steps) at once against one ``streamlit run``
server on the tests' pool; every session must get its answer (the timing and memory targets are the benchmark's,
not the test's)."""
from __future__ import annotations

import json
import sys

import pytest

from tests.app.conftest import ROOT, app_pool  # noqa: F401 - app_pool is a fixture

pytest.importorskip("websockets")


def test_every_session_gets_its_answer(app_pool, tmp_path, monkeypatch):  # noqa: F811
    import importlib.util

    spec = importlib.util.spec_from_file_location("load_test", ROOT / "bench" / "load_test.py")
    load_test = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "load_test", load_test)   # its dataclasses look their module up there
    spec.loader.exec_module(load_test)
    out = tmp_path / "load.json"
    load_test.main(["--sessions", "3", "--searches", "1", "--steps", "2", "--no-warmup", "--no-solo",
                    "--catalog", str(app_pool["catalog"]), "--cache", str(app_pool["cache"]),
                    "--max-seconds", "150", "--json", str(out)])
    result = json.loads(out.read_text())
    load = result["load"]
    problems = [m["error"] for m in load["maps"] if m["error"]] + [s["error"] for s in load["searches"] if s["error"]]
    assert not problems, problems
    assert load["maps_answered"] == 3 and load["searches_answered"] == 1
    assert result["targets"]["all_served"]["pass"]
    assert {m["model"] for m in load["maps"]} <= set(app_pool["names"])
    search = load["searches"][0]
    assert search["wall_s"] > 0 and search["queue_wait_s"] is not None and search["run_s"] is not None
    assert load["map_open"]["n"] == 3 and load["map_click"]["n"] == 3
