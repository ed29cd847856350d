"""Task search: ranking and group ranking on synthetic vectors, and the whole search (finetune + engine) on the tiny
pool: progress, determinism, the kept adapter, the map position, the CLI's JSON, and bad input before any work."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from core.errors import DeltaAtlasError, ExamplesError
from core.pool.catalog import pool_base, read_catalog
from core.pool.folder import vectors_file
from core.pool.vectors import make_table, matrix
from core.reuse.task import TaskResult, cosine_to, find_models, pool_recipe, rank, rank_groups
from core.reuse.train import Example, Recipe

EXAMPLES = [Example("Add two and three.", "Five."), Example("Add one and one.", "Two."),
            Example("Add four and four.", "Eight."), Example("Add two and two.", "Four.")]
STEPS = 3


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTA_ATLAS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pool(tiny_pool, tmp_path_factory):
    """The tiny pool's LoRA adapters in a catalog of our own, with a small recipe.json beside it."""
    from tests.conftest import write_catalog

    root = tmp_path_factory.mktemp("task_pool")
    rows = [{"name": n, "source": str(p), "kind": "lora", "base": str(tiny_pool["base"]), "domain": "ab"[i % 2],
             "dataset": f"set{i // 2}"} for i, (n, p) in enumerate(tiny_pool["loras"].items())]
    write_catalog(root / "catalog.csv", rows)
    recipe = Recipe(rank=4, alpha=8, target_modules=("q_proj", "v_proj"), learning_rate=1e-2, batch_size=2,
                    warmup_steps=1, seed=3)
    (root / "recipe.json").write_text(json.dumps(recipe.to_json()))
    return root / "catalog.csv"


def synthetic_table() -> pd.DataFrame:
    vectors = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.8, 0.2], [-1, 0, 0]], dtype=np.float32)
    labels = pd.DataFrame({"name": list("abcde"), "domain": ["x", "x", "y", "x+y", ""], "dataset": list("ppqrs")})
    return make_table(list("abcde"), vectors, labels)


# -- ranking ----------------------------------------------------------------------------------------------------
def test_rank_orders_by_cosine_and_keeps_labels():
    matches = rank(np.array([2.0, 0.1, 0.0], dtype=np.float32), synthetic_table())
    assert list(matches["name"]) == ["a", "b", "c", "d", "e"]
    assert list(matches.columns) == ["name", "similarity", "domain", "dataset"]
    assert matches["similarity"].iloc[0] == pytest.approx(2 / np.hypot(2, 0.1))
    assert matches["similarity"].iloc[-1] == pytest.approx(-2 / np.hypot(2, 0.1))
    assert list(rank(np.array([0, 1, 0.1]), synthetic_table(), top=2)["name"]) == ["c", "d"]


def test_rank_refuses_vectors_of_another_size():
    with pytest.raises(DeltaAtlasError, match="4 dimensions but the pool's have 3"):
        rank(np.ones(4), synthetic_table())


def test_cosine_of_a_zero_vector_is_zero():
    assert list(cosine_to(np.zeros(3), np.eye(3))) == [0, 0, 0]


def test_rank_groups_means_best_first_and_skips_empty_labels():
    groups = rank_groups(rank(np.array([0.0, 1.0, 0.0]), synthetic_table()))
    domain = groups[groups["group_by"] == "domain"]
    assert list(domain["group"]) == ["y", "x"]                      # "" (model e) is no group; no "x+y" group
    sims = cosine_to(np.array([0.0, 1, 0]), matrix(synthetic_table()))
    assert domain["similarity"].iloc[0] == pytest.approx((sims[2] + sims[3]) / 2)
    assert domain["best"].iloc[0] == pytest.approx(sims[2]) and list(domain["models"]) == [2, 3]
    assert domain["similarity"].iloc[1] == pytest.approx((sims[0] + sims[1] + sims[3]) / 3)   # d is "x+y": in both
    assert set(groups["group_by"]) == {"domain", "dataset"}
    assert len(rank_groups(pd.DataFrame({"name": ["a"], "similarity": [1.0]}))) == 0
    # the score is the mean of the group's `top` closest models; the plain mean is kept beside it
    x = rank_groups(rank(np.array([0.0, 1.0, 0.0]), synthetic_table()), top=2).set_index("group").loc["x"]
    assert x["similarity"] == pytest.approx((sims[3] + sims[1]) / 2)
    assert x["mean"] == pytest.approx((sims[0] + sims[1] + sims[3]) / 3)


# -- the pool ---------------------------------------------------------------------------------------------------
def test_pool_recipe_and_vectors_file(pool, tmp_path):
    assert pool_recipe(pool).learning_rate == 1e-2
    lonely = tmp_path / "cat.csv"
    shutil.copy(pool, lonely)
    assert pool_recipe(lonely) == Recipe()                          # no recipe.json: the default, with a warning
    (tmp_path / "recipe.json").write_text("{not json")
    with pytest.raises(DeltaAtlasError, match="recipe.json cannot be read"):
        pool_recipe(lonely)
    assert vectors_file(lonely) is None
    (tmp_path / "cat.vectors.parquet").write_bytes(b"")
    assert vectors_file(lonely) == tmp_path / "cat.vectors.parquet"


def test_pool_with_two_bases_is_refused(tiny_pool, tmp_path):
    from tests.conftest import write_catalog

    rows = [{"name": "a", "source": str(tiny_pool["loras"]["lora_0"]), "kind": "lora", "base": str(tiny_pool["base"])},
            {"name": "b", "source": str(tiny_pool["loras"]["lora_1"]), "kind": "lora", "base": str(tmp_path)}]
    catalog = read_catalog(write_catalog(tmp_path / "two.csv", rows))
    with pytest.raises(DeltaAtlasError, match="mixes 2 bases"):
        pool_base(catalog, ["a", "b"])


# -- the whole search -------------------------------------------------------------------------------------------
class FakeProjector:
    def transform(self, Y):
        return np.asarray(Y)[:, :2] * 10


def test_find_models_end_to_end(pool, tmp_path):
    events = []
    keep = tmp_path / "kept" / "task-adapter"
    result = find_models(EXAMPLES, pool, steps=STEPS, keep_adapter=keep, projector=FakeProjector(),
                         progress=events.append)
    assert isinstance(result, TaskResult)
    stages = [e.stage for e in events]
    task_stages = stages[stages.index("finetune"):]     # before: the engine embeds the pool (no vector file yet)
    assert set(task_stages) == {"finetune", "embed", "measure"}
    assert task_stages == sorted(task_stages, key=["finetune", "embed", "measure"].index)
    finetune = [e for e in events if e.stage == "finetune"]
    assert [e.done for e in finetune] == list(range(1, STEPS + 1)) and all(e.loss is not None for e in finetune)
    assert len(result.losses) == STEPS
    # every pool model ranked by its cosine to the task vector, best first, with its labels
    from core.engine.embed import embed_catalog

    table = embed_catalog(pool).table
    expected = dict(zip(table["name"], cosine_to(result.vector.astype(np.float64), matrix(table).astype(np.float64))))
    assert list(result.matches["similarity"]) == sorted(result.matches["similarity"], reverse=True)
    assert {n: s for n, s in zip(result.matches["name"], result.matches["similarity"])} == pytest.approx(expected)
    assert {"domain", "dataset"} <= set(result.matches.columns)
    assert set(result.group_matches["group_by"]) == {"domain", "dataset"}
    assert result.position == pytest.approx(result.vector[:2] * 10)
    assert result.adapter_dir == keep.resolve()
    assert (keep / "adapter_config.json").is_file() and (keep / "adapter_model.safetensors").is_file()
    assert [p.name for p in keep.parent.iterdir()] == ["task-adapter"]      # no temporary folder left behind
    # seeded: the same examples give the same task vector
    again = find_models(EXAMPLES, pool, vectors=table, steps=STEPS, top=2)
    assert np.allclose(again.vector, result.vector, atol=1e-5)
    assert len(again.matches) == 2 and again.adapter_dir is None
    # "does it help?": the 4 closest models measured on the examples, in ranking order, and a verdict from both sides
    assert list(result.gains["name"]) == list(result.matches["name"].head(4))
    assert result.gains["loss"].notna().all() and (result.gains["base_loss"] > 0).all()
    assert result.verdict in ("strong", "weak", "none") and result.headline.startswith(
        {"strong": "Strong match", "weak": "Weak match", "none": "Nothing in this pool"}[result.verdict])
    assert len(again.gains) == 4 and list(again.gains["name"][:2]) == list(again.matches["name"])   # before the cut to 2
    assert find_models(EXAMPLES, pool, vectors=table, steps=STEPS, check_help=0).gains is None


def test_find_models_through_the_domain_lens(pool):
    from core.engine.embed import embed_catalog
    from core.reuse.task import similarities

    table = embed_catalog(pool).table
    extra = matrix(table)[:2] + 0.01                       # two more models, so three domains have two models each
    names = [*table["name"], "copy_0", "copy_1"]
    labels = pd.DataFrame({"name": names, "domain": ["a", "b", "c", "a", "b", "c"]})
    six = make_table(names, np.vstack([matrix(table), extra]).astype(np.float32), labels)
    result = find_models(EXAMPLES, pool, vectors=six, steps=STEPS, compare="domain-lens")
    assert result.compare == "domain-lens" and result.to_json()["compare"] == "domain-lens"
    expected = dict(zip(names, similarities(result.vector, six, "domain-lens")))
    assert dict(zip(result.matches["name"], result.matches["similarity"])) == pytest.approx(expected)
    raw = find_models(EXAMPLES, pool, vectors=six, steps=STEPS)
    assert np.allclose(raw.vector, result.vector, atol=1e-5)     # the task vector is the same; only the ranking differs
    assert raw.match_strength == pytest.approx(result.match_strength)   # "no close match" reads raw cosine either way


def test_pool_search_settings_set_the_steps(tmp_path, pool):
    from core.pool.folder import SEARCH_FILE
    from core.reuse.task import TASK_STEPS, task_steps

    catalog = tmp_path / "catalog.csv"
    assert task_steps(catalog) == TASK_STEPS and task_steps(None) == TASK_STEPS
    (tmp_path / SEARCH_FILE).write_text('{"steps": 7}')
    assert task_steps(catalog) == 7
    for bad in ('{"steps": 0}', '{"steps": "ten"}', "[1]", "not json"):
        (tmp_path / SEARCH_FILE).write_text(bad)
        with pytest.raises(DeltaAtlasError, match="search.json cannot be read"):
            task_steps(catalog)
    own = pool.parent / SEARCH_FILE                     # the pool's own file is what a search without --steps uses
    own.write_text('{"steps": 2}')
    try:
        assert len(find_models(EXAMPLES, pool).losses) == 2
    finally:
        own.unlink()


def test_find_models_checks_before_work(pool, tmp_path, monkeypatch):
    import core.reuse.task

    def boom(*args, **kwargs):
        raise AssertionError("no finetuning should start")

    monkeypatch.setattr(core.reuse.task, "finetune_task", boom)
    with pytest.raises(ExamplesError, match="holds 1 example"):
        find_models(EXAMPLES[:1], pool)
    with pytest.raises(DeltaAtlasError, match="Unknown comparison 'closest'"):
        find_models(EXAMPLES, pool, compare="closest")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("x")
    with pytest.raises(DeltaAtlasError, match="already exists and is not empty"):
        find_models(EXAMPLES, pool, keep_adapter=occupied)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DeltaAtlasError, match="Cannot write the task adapter"):
        find_models(EXAMPLES, pool, keep_adapter=a_file / "adapter")


def test_cli_find_json(pool, tmp_path, capsys):
    from core.cli import main

    examples = tmp_path / "task.jsonl"
    examples.write_text("\n".join(json.dumps({"question": e.instruction, "answer": e.response}) for e in EXAMPLES))
    assert main(["find", "--examples", str(examples), "--catalog", str(pool), "--top", "3", "--steps", "2",
                 "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)                                    # exactly one JSON object on stdout
    assert len(data["matches"]) == 3 and data["seconds"] > 0
    assert set(data["matches"][0]) == {"name", "similarity", "domain", "dataset"}
    assert data["matches"][0]["similarity"] >= data["matches"][1]["similarity"]
    assert main(["find", "--examples", str(tmp_path / "missing.jsonl"), "--catalog", str(pool)]) == 2
    assert "does not exist" in capsys.readouterr().err
    # the tiny pool has two domains: the lens cannot be fitted, and says so
    assert main(["find", "--examples", str(examples), "--catalog", str(pool), "--steps", "2",
                 "--compare", "domain-lens"]) == 2
    assert "at least 3 domains" in capsys.readouterr().err


def test_missing_demo_zoo_says_how_to_build_it(tmp_path, monkeypatch):
    import core.pool.folder

    monkeypatch.setattr(core.pool.folder, "DEMO_CATALOG", (tmp_path / "demo" / "catalog.csv").resolve())
    with pytest.raises(DeltaAtlasError, match="demo zoo is not built yet.*build-demo"):
        find_models(EXAMPLES, tmp_path / "demo" / "catalog.csv")
    with pytest.raises(DeltaAtlasError, match="Catalog file .* does not exist"):
        find_models(EXAMPLES, tmp_path / "other.csv")


def test_closeness_verdict_is_calibrated_on_the_pool():
    from core.reuse.task import conclude, judge_closeness
    from tests.core.reuse.test_novelty import clustered_pool

    vectors, centres = clustered_pool()
    table = make_table([f"m{i}" for i in range(len(vectors))], vectors)
    near = TaskResult(vector=np.zeros(3), matches=pd.DataFrame(), group_matches=pd.DataFrame())
    judge_closeness(near, table, rank(centres[0].astype(np.float32), table)["similarity"].to_numpy())
    far = TaskResult(vector=np.zeros(3), matches=pd.DataFrame(), group_matches=pd.DataFrame())
    judge_closeness(far, table, rank(-centres.sum(0).astype(np.float32), table)["similarity"].to_numpy())
    assert near.close and not far.close
    assert far.match_note.startswith("Not close by the vectors")
    conclude(far)                                    # no loss measured: the vectors alone decide
    assert far.verdict == "none" and far.to_json()["no_close_match"] is True
    tiny = TaskResult(vector=np.zeros(3), matches=pd.DataFrame(), group_matches=pd.DataFrame())
    judge_closeness(tiny, table.head(2), np.array([0.1, 0.2]))
    assert tiny.close and "Too few models" in tiny.match_note


def test_default_comparison_is_the_domain_lens_only_where_the_labels_allow_one():
    from core.reuse.task import LABEL_FREE_COMPARE, default_compare

    assert default_compare(synthetic_table()) == LABEL_FREE_COMPARE          # two domains: no lens
    rng = np.random.default_rng(0)
    names = [f"m{i}" for i in range(9)]
    labels = pd.DataFrame({"name": names, "domain": ["x", "x", "y", "y", "z", "z", "x+y", "", "w"]})
    table = make_table(names, rng.normal(size=(9, 6)).astype(np.float32), labels)
    assert default_compare(table) == "domain-lens"
    assert default_compare(table.drop(columns=["domain"])) == LABEL_FREE_COMPARE


def test_cluster_lens_needs_no_labels_and_ranks_every_model():
    from core.reuse.task import similarities

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 8))
    vectors = np.concatenate([c + 0.05 * rng.normal(size=(4, 8)) for c in centres]).astype(np.float32)
    table = make_table([f"m{i}" for i in range(12)], vectors)                 # no label column at all
    sims = similarities(centres[1].astype(np.float32), table, "cluster-lens")
    assert sims.shape == (12,) and set(np.argsort(-sims)[:4]) == {4, 5, 6, 7}


def test_the_domain_lens_uses_the_shrinkage_the_pool_chose(tmp_path):
    from core.reuse.task import lens_shrinkage, match_task

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 16))
    vectors = np.repeat(centres, 3, axis=0) + 0.4 * rng.normal(size=(12, 16))
    table = make_table([f"m{i}" for i in range(12)], vectors)
    table["domain"] = np.repeat(["a", "b", "c", "d"], 3)
    task = (centres[1] + 0.8 * rng.normal(size=16)).astype(np.float32)
    assert lens_shrinkage(tmp_path / "catalog.csv") == "auto" and lens_shrinkage(None) == "auto"
    (tmp_path / "search.json").write_text('{"steps": 5, "lens_shrinkage": 0.05}')
    assert lens_shrinkage(tmp_path / "catalog.csv") == 0.05
    result = match_task(task, table, compare="domain-lens", catalog_path=tmp_path / "catalog.csv")
    chosen = rank(task, table, compare="domain-lens", shrinkage=0.05)
    auto = rank(task, table, compare="domain-lens")
    np.testing.assert_allclose(result.matches["similarity"], chosen["similarity"])
    assert not np.allclose(chosen["similarity"], auto["similarity"])     # the setting really changes the lens
    cluster = rank(task, table, compare="cluster-lens", shrinkage=0.05)  # the cluster lens keeps Ledoit-Wolf's
    np.testing.assert_allclose(cluster["similarity"], rank(task, table, compare="cluster-lens")["similarity"])
