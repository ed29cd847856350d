"""Merging: every check before work (names, bases, ranks, methods, weights, output folder), the weights (auto,
search), a real merge on tiny adapters that PEFT loads back, exact methods reproducing an ingredient, additivity,
recipes that replay, the CLI, and failures that leave nothing half-written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from core.errors import MergeError
from core.reuse.merge import auto_weights, merge_adapters, read_recipe, replay_recipe, search_weights
from core.reuse.merge_plan import METHODS, check_out_dir, parse_weights, plan_merge
from core.reuse.train import Example, example_loss

EXAMPLES = [Example("Add two and three.", "Five."), Example("Add one and one.", "Two."),
            Example("Name a bird.", "A robin."), Example("Name a colour.", "Blue.")]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DELTA_ATLAS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pool(tiny_pool, tmp_path_factory):
    """The tiny pool (rank-4 LoRA on q/v/up, two full models) plus a rank-8 adapter on k/v and an adapter of another
    base, in one catalog."""
    from tests.conftest import make_base, make_lora, write_catalog

    root = tmp_path_factory.mktemp("merge_pool")
    base = str(tiny_pool["base"])
    rank8 = make_lora(tiny_pool["base"], root / "rank8", seed=7, rank=8, targets=("k_proj", "v_proj"))
    other_base = make_base(root / "other_base", seed=5)
    foreign = make_lora(other_base, root / "foreign", seed=8)
    rows = [{"name": n, "source": str(p), "kind": "lora", "base": base, "domain": "ab"[i % 2]}
            for i, (n, p) in enumerate(tiny_pool["loras"].items())]
    rows += [{"name": "full_0", "source": str(tiny_pool["fulls"]["full_0"]), "kind": "full", "base": base},
             {"name": "rank8", "source": str(rank8), "kind": "lora", "base": base, "domain": "b"},
             {"name": "foreign", "source": str(foreign), "kind": "lora", "base": str(other_base), "domain": "b"}]
    return write_catalog(root / "catalog.csv", rows)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- checks before any work -------------------------------------------------------------------------------------
def test_parse_weights():
    assert parse_weights("auto", 2) == "auto" and parse_weights(" Search ", 3) == "search"
    assert parse_weights("0.5, -1", 2) == [0.5, -1.0] and parse_weights([1, 2], 2) == [1.0, 2.0]
    with pytest.raises(MergeError, match="3 weight\\(s\\) for 2 adapters"):
        parse_weights("1,2,3", 2)
    with pytest.raises(MergeError, match="not numbers"):
        parse_weights("1,heavy", 2)
    with pytest.raises(MergeError, match="non-finite"):
        parse_weights([1, float("inf")], 2)


@pytest.mark.parametrize("names,method,weights,density,pattern", [
    ("lora_0,lora_1", "average", "auto", None, "Unknown merge method 'average'"),
    ("lora_0", "ties", "auto", None, "at least two adapters; got 1"),
    ("lora_0,lora_0", "ties", "auto", None, "listed twice"),
    ("lora_0,nope,also_nope", "ties", "auto", None, "Not in the catalog .*: nope, also_nope"),
    ("lora_0,full_0", "linear", [1, 1], None, "full_0 is a full model"),
    ("lora_0,foreign", "svd", [1, 1], None, "different bases .*foreign: .*other_base"),
    ("lora_0,rank8", "ties", "auto", None, "one rank, but lora_0 has rank 4, rank8 has rank 8; use svd or cat"),
    ("lora_0,lora_1", "linear", [1, 1], 0.5, "Density 0.5 does not apply"),
    ("lora_0,lora_1", "ties", [1, 1], 1.5, "Density 1.5 does not apply"),
])
def test_plan_refuses(pool, names, method, weights, density, pattern):
    with pytest.raises(MergeError, match=pattern):
        plan_merge(pool, names, method, weights, density)


def test_plan_accepts_mixed_ranks_for_svd_and_cat(pool):
    for method in ("svd", "cat"):
        plan = plan_merge(pool, ["lora_0", "rank8"], method, "0.5,0.5")
        assert plan.ranks == [4, 8] and plan.weights == [0.5, 0.5] and plan.density is None
    assert plan_merge(pool, "lora_0,lora_1", "dare_ties", "search").density == METHODS["dare_ties"].density


def test_out_dir_checks(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(MergeError, match="already exists and is not empty"):
        check_out_dir(tmp_path / "full")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MergeError, match="is a file: give a folder path"):
        check_out_dir(tmp_path / "file")
    with pytest.raises(MergeError, match="Cannot write the merged adapter to .*file is a file.*choose a folder"):
        check_out_dir(tmp_path / "file" / "merged")                 # a parent that is a file: unwritable
    with pytest.raises(MergeError, match="No folder given"):
        check_out_dir(None)
    out, work = check_out_dir(tmp_path / "full", overwrite=True)
    assert work.parent == tmp_path and work.is_dir() and out == (tmp_path / "full").resolve()


def test_merge_refuses_before_any_work(pool, tmp_path, monkeypatch):
    import core.reuse.merge

    monkeypatch.setattr(core.reuse.merge, "load_ingredients", lambda *a, **k: pytest.fail("no model should load"))
    with pytest.raises(MergeError, match="weights search tunes the weights on the task's examples"):
        merge_adapters(pool, "lora_0,lora_1", "ties", "search", None, tmp_path / "out")
    with pytest.raises(MergeError, match="weights auto weighs adapters"):
        merge_adapters(pool, "lora_0,lora_1", "ties", "auto", None, tmp_path / "out")
    with pytest.raises(MergeError, match="Not in the catalog"):
        merge_adapters(pool, "lora_0,ghost", "ties", [1, 1], EXAMPLES, tmp_path / "out")
    with pytest.raises(MergeError, match="Cannot write the merged adapter to .*blocker is a file"):
        (tmp_path / "blocker").write_text("x")
        merge_adapters(pool, "lora_0,lora_1", "ties", [1, 1], EXAMPLES, tmp_path / "blocker" / "out")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["blocker"]


# -- weights ----------------------------------------------------------------------------------------------------
def test_auto_weights():
    assert auto_weights(np.array([0.6, 0.2, -0.5]), METHODS["linear"]) == pytest.approx([0.75, 0.25, 0.0])
    assert auto_weights(np.array([0.6, 0.2, -0.5]), METHODS["ties"]) == pytest.approx([2.25, 0.75, 0.0])
    assert auto_weights(np.array([-0.1, -0.3]), METHODS["svd"]) == pytest.approx([0.5, 0.5])


def test_search_weights_lowers_a_loss_within_bounds():
    target = np.array([0.8, -0.4, 0.1])
    loss = lambda w: float(np.sum((np.asarray(w) - target) ** 2))  # noqa: E731
    weights, history = search_weights(loss, 3, METHODS["linear"], budget=40, seed=1)
    assert len(history) == 40 and history[0]["weights"] == pytest.approx([1 / 3] * 3)
    assert loss(weights) < loss([1 / 3] * 3) / 4
    assert all(-1.5 <= w <= 1.5 for h in history for w in h["weights"])
    assert min(h["score"] for h in history) == pytest.approx(loss(weights) + 0.05 * np.mean(np.abs(weights)))
    assert search_weights(loss, 3, METHODS["linear"], budget=40, seed=1)[0] == weights   # seeded


# -- real merges on tiny adapters -------------------------------------------------------------------------------
def load_merged(tiny_pool, folder):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_pool["base"])
    return PeftModel.from_pretrained(base, str(folder)).eval(), AutoTokenizer.from_pretrained(tiny_pool["base"])


def test_merge_writes_a_loadable_adapter_recipe_and_report(pool, tiny_pool, tmp_path):
    out = tmp_path / "merged"
    events = []
    result = merge_adapters(pool, ["lora_0", "lora_1"], "linear", [0.7, 0.3], EXAMPLES, out, progress=events.append)
    assert sorted(p.name for p in out.iterdir() if p.name != "README.md") == [
        "adapter_config.json", "adapter_model.safetensors", "recipe.yaml", "report.json"]
    assert leftovers(tmp_path) == []
    assert set(result.losses) == {"base", "lora_0", "lora_1", "merged"}
    assert result.perplexities["merged"] == pytest.approx(np.exp(result.losses["merged"]))
    assert result.weights == [0.7, 0.3] and result.weights_mode == "given" and result.out_dir == out.resolve()
    assert {"evaluate", "merge", "embed"} <= {e.stage for e in events}
    # the folder loads in PEFT as it is and gives the reported loss
    model, tokenizer = load_merged(tiny_pool, out)
    assert example_loss(model, tokenizer, EXAMPLES) == pytest.approx(result.losses["merged"], rel=1e-4)
    # additivity preview: predicted = weighted sum of the ingredients' vectors, measured = the merged adapter's
    from core.reuse.task import embed_adapter_dirs

    vectors = embed_adapter_dirs(str(tiny_pool["base"]), {"a": tiny_pool["loras"]["lora_0"],
                                                          "b": tiny_pool["loras"]["lora_1"], "m": out})
    assert result.predicted_vector == pytest.approx(0.7 * vectors["a"] + 0.3 * vectors["b"], rel=1e-4, abs=1e-5)
    assert result.measured_vector == pytest.approx(vectors["m"], rel=1e-4, abs=1e-5)
    assert -1 <= result.predicted_vs_measured_cosine <= 1
    report = json.loads((out / "report.json").read_text())
    assert report["losses"] == pytest.approx(result.losses) and len(report["measured_vector"]) == 64
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["method"] == "linear" and recipe["weights"] == [0.7, 0.3] and recipe["base"] == str(tiny_pool["base"])
    assert [i["name"] for i in recipe["ingredients"]] == ["lora_0", "lora_1"]


@pytest.mark.parametrize("method", ["cat", "svd"])
def test_exact_methods_reproduce_one_ingredient(pool, tmp_path, method):
    """cat and svd combine the full updates exactly: weights (1, 0) give back the first adapter, whatever the ranks."""
    result = merge_adapters(pool, ["rank8", "lora_1"], method, [1, 0], EXAMPLES, tmp_path / method, measure=False)
    assert result.losses["merged"] == pytest.approx(result.losses["rank8"], rel=1e-4)
    assert result.losses["merged"] != pytest.approx(result.losses["base"], rel=1e-4)


def test_search_and_auto_weights_on_tiny_adapters(pool, tiny_pool, tmp_path):
    events = []
    found = merge_adapters(pool, ["lora_0", "lora_1"], "ties", "search", EXAMPLES, tmp_path / "s", budget=4,
                           measure=False, progress=events.append)
    assert found.weights_mode == "search" and len(found.search) == 4
    assert [e.done for e in events if e.stage == "search"] == [1, 2, 3, 4]
    best = min(found.search, key=lambda h: h["score"])
    assert found.weights == best["weights"]
    assert found.losses["merged"] == pytest.approx(best["loss"], rel=1e-4)   # the reported merge is the best found
    # auto: a task that looks exactly like lora_1 puts all the weight on lora_1
    from core.reuse.task import embed_adapter_dirs

    task = embed_adapter_dirs(str(tiny_pool["base"]), {"t": tiny_pool["loras"]["lora_1"]})["t"]
    auto = merge_adapters(pool, ["lora_0", "lora_1"], "ties", "auto", EXAMPLES, tmp_path / "a", task_vector=task,
                          measure=False)
    assert auto.similarities["lora_1"] == pytest.approx(1.0, abs=1e-5)
    assert auto.weights[1] > auto.weights[0] and sum(auto.weights) == pytest.approx(2.0)


def test_replay_gives_the_same_adapter(pool, tmp_path):
    from safetensors.torch import load_file

    first = merge_adapters(pool, ["lora_0", "lora_2"], "dare_ties", [0.9, 0.6], EXAMPLES, tmp_path / "one",
                           measure=False)
    again = replay_recipe(tmp_path / "one" / "recipe.yaml", EXAMPLES, tmp_path / "two", measure=False)
    assert again.weights == first.weights and again.density == 0.5
    a, b = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("one", "two"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # DARE's random drop is seeded


def test_bad_recipes(tmp_path):
    with pytest.raises(MergeError, match="does not exist"):
        read_recipe(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("method: [unclosed")
    with pytest.raises(MergeError, match="not valid YAML"):
        read_recipe(tmp_path / "bad.yaml")
    (tmp_path / "thin.yaml").write_text("method: ties\n")
    with pytest.raises(MergeError, match="lacks base, weights, ingredients"):
        read_recipe(tmp_path / "thin.yaml")


def test_failure_leaves_nothing_half_written(pool, tmp_path, monkeypatch):
    import core.reuse.merge

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(core.reuse.merge, "write_outputs", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        merge_adapters(pool, ["lora_0", "lora_1"], "linear", [1, 1], EXAMPLES, tmp_path / "out", measure=False)
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []


# -- command line -----------------------------------------------------------------------------------------------
def test_cli_merge_and_replay(pool, tmp_path, capsys):
    from core.cli import main

    examples = tmp_path / "task.jsonl"
    examples.write_text("\n".join(json.dumps({"prompt": e.instruction, "completion": e.response}) for e in EXAMPLES))
    args = ["merge", "--models", "lora_0,lora_1", "--method", "ties", "--weights", "0.5,1", "--examples", str(examples),
            "--catalog", str(pool), "--no-measure", "--json"]
    assert main([*args, "--out", str(tmp_path / "m")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weights"] == [0.5, 1.0] and set(data["losses"]) == {"base", "lora_0", "lora_1", "merged"}
    assert main(["merge", "--recipe", str(tmp_path / "m" / "recipe.yaml"), "--examples", str(examples),
                 "--out", str(tmp_path / "r"), "--no-measure", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["losses"] == pytest.approx(data["losses"])
    assert main([*args, "--out", str(tmp_path / "m")]) == 2                       # occupied output folder
    assert "already exists and is not empty" in capsys.readouterr().err
    assert main(["merge", "--models", "lora_0,foreign", "--method", "svd", "--weights", "1,1", "--catalog", str(pool),
                 "--out", str(tmp_path / "f")]) == 2
    assert "different bases" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_a_merge_that_overflows_is_refused_and_nothing_is_written(pool, tmp_path):
    with pytest.raises(MergeError, match="not finite"):
        merge_adapters(pool, ["lora_0", "lora_1"], "ties", [1e39, 1e39], None, tmp_path / "huge", measure=False)
    assert not (tmp_path / "huge").exists() and [p.name for p in tmp_path.iterdir()] == []


def test_recipes_with_aliases_or_of_a_huge_size_are_refused_before_parsing(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (tmp_path / "bomb.yaml").write_text(bomb)
    with pytest.raises(MergeError, match="aliases") as caught:
        read_recipe(tmp_path / "bomb.yaml")
    assert len(str(caught.value)) < 400
    (tmp_path / "big.yaml").write_text("method: ties\n" + "# padding\n" * 20_000)
    with pytest.raises(MergeError, match="a merge recipe is a few hundred"):
        read_recipe(tmp_path / "big.yaml")
