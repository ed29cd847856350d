"""Reference tasks: the shipped everyday tasks load, their vectors are made exactly as a user's task vector is and
stored beside the catalog, and a pool whose novelty.json sets a margin judges "close" against them."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from core.errors import DeltaAtlasError
from core.pool.vectors import make_table, matrix, write_vectors
from core.reuse.novelty import CloseMatchRule, load_rule
from core.reuse.references import MIN_REFERENCES, REFERENCE_DIR, load_references, reference_path, reference_tasks
from core.reuse.task import TaskResult, find_models, judge_closeness, rank
from tests.core.reuse.test_task import EXAMPLES, STEPS, pool  # noqa: F401  (the tiny pool fixture)

TASKS = {"weather": [("Sunny today?", "Yes, lovely."), ("Rain again.", "Sadly, yes.")],
         "pets": [("Feed a cat how often?", "Twice a day."), ("Can dogs eat grapes?", "No.")],
         "cards": [("Birthday line?", "Happy birthday!"), ("Thank-you line?", "Thank you so much!")]}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTA_ATLAS_CACHE", str(tmp_path / "cache"))


def write_tasks(folder, tasks=TASKS):
    folder.mkdir(parents=True, exist_ok=True)
    for name, pairs in tasks.items():
        (folder / f"{name}.jsonl").write_text("\n".join(json.dumps({"instruction": q, "response": a})
                                                        for q, a in pairs))
    return folder


def test_the_shipped_reference_tasks_load_and_stay_apart_from_the_measuring_sets():
    tasks = reference_tasks()
    assert len(tasks) >= MIN_REFERENCES and all(len(examples) >= 8 for examples in tasks.values())
    bench = REFERENCE_DIR.parents[1] / "bench"
    measured = {p.stem.split("-", 1)[1] for folder in ("dev_tasks", "ood_tasks") for p in (bench / folder).glob("off-*")}
    assert not set(tasks) & measured     # a reference task is never also a task the rule is measured on


def test_too_few_or_missing_reference_tasks_are_refused(tmp_path):
    with pytest.raises(DeltaAtlasError, match="is missing"):
        reference_tasks(tmp_path / "nowhere")
    with pytest.raises(DeltaAtlasError, match=f"holds 2 reference tasks; give at least {MIN_REFERENCES}"):
        reference_tasks(write_tasks(tmp_path / "two", dict(list(TASKS.items())[:2])))


# -- the rule ------------------------------------------------------------------------------------------------------
def test_a_margin_judges_against_the_closest_reference_task():
    rule = CloseMatchRule(top=2, margin=0.05)
    pool_sims = np.array([0.9, 0.8, 0.1])                  # the two closest: 0.85
    assert rule.is_close(pool_sims, np.array([0.5, 0.79]))          # leads by 0.06
    assert not rule.is_close(pool_sims, np.array([0.5, 0.81]))      # leads by 0.04
    note = rule.explain(pool_sims, np.array([0.5, 0.81]), ["weather", "pets"])
    assert note.startswith("Not close by the vectors") and "'pets'" in note and "+0.05" in note
    with pytest.raises(DeltaAtlasError, match="not fitted"):    # without references it needs the pool's background
        rule.is_close(pool_sims, None)
    with pytest.raises(DeltaAtlasError, match="margin=nan"):
        CloseMatchRule(margin=float("nan")).fit(np.eye(4))


def test_a_pool_sets_its_margin_in_novelty_json(tmp_path):
    (tmp_path / "novelty.json").write_text('{"quantile": 0.7, "combine": "both", "margin": -0.1}')
    assert load_rule(tmp_path / "novelty.json") == CloseMatchRule(quantile=0.7, combine="both", margin=-0.1)
    (tmp_path / "novelty.json").write_text('{"margin": "wide"}')
    with pytest.raises(DeltaAtlasError, match="cannot be read"):
        load_rule(tmp_path / "novelty.json")


def test_judge_closeness_reads_the_references_where_the_pool_has_a_margin(tmp_path):
    from tests.core.reuse.test_novelty import clustered_pool

    vectors, centres = clustered_pool()
    table = make_table([f"m{i}" for i in range(len(vectors))], vectors)
    references = make_table(["everyday", "chat", "cards"], np.stack([-centres.sum(0), -centres[0], -centres[1]]))
    (tmp_path / "novelty.json").write_text('{"margin": 0.0}')

    def judged(task):
        result = TaskResult(vector=task, matches=rank(task, table), group_matches=pd.DataFrame())
        judge_closeness(result, table, result.matches["similarity"].to_numpy(), tmp_path / "catalog.csv",
                        references=references)
        return result

    near, far = judged(centres[2].astype(np.float32)), judged((-centres.sum(0) + 0.1).astype(np.float32))
    assert near.close and not far.close
    assert far.nearest_reference == "everyday" and "'everyday'" in far.match_note
    no_margin = TaskResult(vector=far.vector, matches=far.matches, group_matches=pd.DataFrame())
    judge_closeness(no_margin, table, far.matches["similarity"].to_numpy(), None, references=references)
    assert no_margin.nearest_reference == "" and "pool's own model pairs" in no_margin.match_note


def test_stored_references_of_another_width_or_too_few_are_not_used(tmp_path, caplog):
    catalog = tmp_path / "catalog.csv"
    assert load_references(catalog) is None and load_references(None) is None
    write_vectors(make_table(list("abc"), np.ones((3, 4))), reference_path(catalog))
    assert len(load_references(catalog, width=4)) == 3
    with caplog.at_level(logging.WARNING):
        assert load_references(catalog, width=8) is None
    assert "another base" in caplog.text
    write_vectors(make_table(list("ab"), np.ones((2, 4))), reference_path(catalog))
    assert load_references(catalog, width=4) is None


# -- computing them on the tiny pool ---------------------------------------------------------------------------------
def test_reference_vectors_are_task_vectors_stored_beside_the_catalog(pool, tmp_path):  # noqa: F811
    from core.cli import main
    from core.reuse.reference_build import embed_references

    folder = write_tasks(tmp_path / "refs")
    (pool.parent / "search.json").write_text(json.dumps({"steps": STEPS}))
    try:
        table = embed_references(pool, folder)
        assert list(table["name"]) == sorted(TASKS) and reference_path(pool).is_file()
        stored = load_references(pool)
        assert np.allclose(matrix(stored), matrix(table))
        # a reference vector is exactly the vector a search makes of the same examples
        from core.reuse.train import Example

        cards = [Example(q, a) for q, a in TASKS["cards"]]
        assert np.allclose(find_models(cards, pool, check_help=0).vector, matrix(table)[0], atol=1e-5)
        # with a margin in novelty.json, the search judges against them and names the closest
        (pool.parent / "novelty.json").write_text('{"margin": 0.0}')
        result = find_models(EXAMPLES, pool, check_help=0)
        assert result.nearest_reference in TASKS and result.to_json()["nearest_reference"] == result.nearest_reference
        assert "reference task" in result.match_note
        assert main(["references", "--catalog", str(pool), "--tasks", str(folder)]) == 0
        assert main(["references", "--catalog", str(pool), "--tasks", str(tmp_path / "none")]) == 2
    finally:
        for name in ("search.json", "novelty.json", "references.parquet"):
            (pool.parent / name).unlink(missing_ok=True)


def test_a_rule_whose_references_are_missing_falls_back_to_the_pool_and_says_how_to_mend_it(tmp_path):
    from tests.core.reuse.test_novelty import clustered_pool

    vectors, centres = clustered_pool()
    table = make_table([f"m{i}" for i in range(len(vectors))], vectors)
    (tmp_path / "novelty.json").write_text('{"margin": 0.0, "quantile": 0.7}')
    task = (-centres.sum(0)).astype(np.float32)
    result = TaskResult(vector=task, matches=rank(task, table), group_matches=pd.DataFrame())
    judge_closeness(result, table, result.matches["similarity"].to_numpy(), tmp_path / "catalog.csv", references=None)
    assert not result.close and result.nearest_reference == ""
    assert "could not be read" in result.match_note and "python -m core references" in result.match_note
