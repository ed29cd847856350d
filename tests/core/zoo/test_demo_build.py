"""The demo-zoo builder, end to end on a micro corpus written here (two domains, a few hundred lines)."""
from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from core.errors import DeltaAtlasError
from core.pool.catalog import read_catalog
from core.zoo import demo_data
from core.zoo.demo_build import ZooPlan, build_demo, plan_models

WORDS = "the a river city music garden morning people history market winter letter story light road".split()


def write_micro_corpus(root: Path, seed: int = 0) -> Path:
    """pretrain/ text, math (gsm8k, svamp) and coding (mbpp, cruxeval) in their real file formats."""
    rng = random.Random(seed)
    (root / "pretrain/wikitext-2").mkdir(parents=True)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "." for _ in range(300)]
    (root / "pretrain/wikitext-2/valid.txt").write_text("\n\n".join(lines))
    (root / "math/gsm8k").mkdir(parents=True)
    problems = [{"question": f"Tom has {a} apples and buys {b} more. How many now?",
                 "answer": f"Tom has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
                for a, b in ((i + 1, (7 * i) % 40 + 1) for i in range(60))]
    for split, rows in (("train", problems[:45]), ("test", problems[45:])):
        (root / f"math/gsm8k/{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (root / "math/svamp").mkdir(parents=True)
    (root / "math/svamp/SVAMP.json").write_text(json.dumps([
        {"Body": f"There are {a} birds.", "Question": f"If {b} fly away, how many remain?",
         "Equation": f"( {a}.0 - {b}.0 )", "Answer": float(a - b)} for a, b in ((20 + i, i % 19 + 1) for i in range(50))]))
    (root / "coding/mbpp").mkdir(parents=True)
    (root / "coding/mbpp/mbpp.jsonl").write_text("\n".join(json.dumps(
        {"text": f"Write a function to add {k} to a number.", "code": f"def add_{k}(x):\r\n    return x + {k}"}) for k in range(60)))
    (root / "coding/cruxeval").mkdir(parents=True)
    (root / "coding/cruxeval/cruxeval.jsonl").write_text("\n".join(json.dumps(
        {"code": f"def f(x):\n    return x * {k}", "input": str(k), "output": str(k * k), "id": f"s{k}"}) for k in range(50)))
    return root


@pytest.fixture(scope="module")
def micro_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro")
    data = write_micro_corpus(root / "datasets")
    catalog = build_demo(data, root / "zoo", ZooPlan.micro(), vectors=True, report_too=False)
    return {"data": data, "zoo": root / "zoo", "catalog": catalog}


def test_plan_covers_every_variant_for_the_datasets_present(tmp_path):
    data = write_micro_corpus(tmp_path)
    specs = plan_models(ZooPlan.micro(), data)
    variants = {s.variant for s in specs}
    assert variants == {"primary", "breadth", "robustness", "full", "mixture"}
    primaries = [s for s in specs if s.variant == "primary"]
    assert len(primaries) == 6  # two domains x three splits
    for domain in ("math", "coding"):
        slices = [s.slices[0] for s in primaries if s.domain == domain]
        ranges = [set(range(start, stop)) for _, start, stop in slices]
        assert not (ranges[0] & ranges[1]) and not (ranges[1] & ranges[2]), "primary splits must be disjoint"
    mixture = next(s for s in specs if s.variant == "mixture")
    names = {s.name for s in specs}
    assert all(part in names for part in mixture.mixture_of.split("+"))


def test_extra_answer_forms_join_the_plan_only_when_asked(tmp_path):
    data = write_micro_corpus(tmp_path)
    plain = {s.dataset for s in plan_models(ZooPlan.micro(), data)}
    assert not plain & {info.key for info in demo_data.EXTRA_FORMS}
    every = {info.key for info in demo_data.EXTRA_FORMS}
    plan = replace(ZooPlan.micro(), extra_forms=tuple(sorted(every)))
    crossed = {s.name: s for s in plan_models(plan, data)}
    # the micro corpus holds gsm8k, mbpp and cruxeval: their restyles join as breadth models of their domain
    for key in ("gsm8k_number", "gsm8k_check", "cruxeval_check", "cruxeval_letter", "mbpp_explained"):
        spec = next(s for s in crossed.values() if s.dataset == key)
        assert spec.variant == "breadth" and spec.domain == demo_data.DATASETS[key].domain
    with pytest.raises(DeltaAtlasError, match="not restyled datasets"):
        plan_models(replace(ZooPlan.micro(), extra_forms=("gsm8k",)), data)


def test_training_never_touches_held_out_examples(tmp_path):
    data = write_micro_corpus(tmp_path)
    trainable = demo_data.trainable(data, "gsm8k")
    held = demo_data.held_out(data, "gsm8k")
    assert held and not set(held) & set(trainable)
    assert len(held) + len(trainable) == 60


def test_build_writes_an_embeddable_catalog(micro_zoo):
    catalog = read_catalog(micro_zoo["catalog"])
    specs = plan_models(ZooPlan.micro(), micro_zoo["data"])
    assert catalog.names == [s.name for s in specs]
    assert {"domain", "dataset", "format", "method", "variant", "setting", "held_out_loss", "base_held_out_loss",
            "shipped"} <= set(catalog.label_columns)
    for entry in catalog:
        info = json.loads((entry.source.local / "training.json").read_text())
        assert info["held_out_loss"] == float(entry.labels["held_out_loss"]) and info["held_out_examples"] == 4
        # full finetunes are kept out of the shipped folder (too big on a real base); their vectors ship
        assert (entry.source.local.parent.name == "full") == (entry.kind == "full")
        assert entry.labels["shipped"] == ("vectors only" if entry.kind == "full" else "yes")
    assert {e.kind for e in catalog} == {"lora", "full"}
    figures = json.loads((micro_zoo["zoo"] / "base/pretraining.json").read_text())
    assert figures["validation_perplexity"] > 1
    from core.pool.vectors import matrix, read_vectors

    table = read_vectors(micro_zoo["zoo"] / "vectors.parquet")
    assert list(table["name"]) == catalog.names and matrix(table).shape[0] == len(catalog)


def test_build_resumes_without_retraining(micro_zoo):
    model_file = micro_zoo["zoo"] / "models" / "math-gsm8k-first" / "adapter_model.safetensors"
    before = model_file.stat().st_mtime_ns
    build_demo(micro_zoo["data"], micro_zoo["zoo"], ZooPlan.micro(), vectors=False, report_too=False)
    assert model_file.stat().st_mtime_ns == before


def test_build_is_deterministic(micro_zoo, tmp_path):
    from safetensors.torch import load_file

    zoo = tmp_path / "again"
    (zoo / "models").mkdir(parents=True)
    import shutil

    shutil.copytree(micro_zoo["zoo"] / "base", zoo / "base")  # reuse the base, retrain one adapter
    plan = ZooPlan.micro()
    spec = next(s for s in plan_models(plan, micro_zoo["data"]) if s.name == "math-gsm8k-first")
    from core.zoo.demo_build import train_model

    train_model(spec, zoo / "base", micro_zoo["data"], zoo / "models" / spec.name, plan, None)
    first = load_file(micro_zoo["zoo"] / "models" / spec.name / "adapter_model.safetensors")
    again = load_file(zoo / "models" / spec.name / "adapter_model.safetensors")
    assert first.keys() == again.keys()
    assert all((first[k] == again[k]).all() for k in first)


def test_only_retrains_the_named_models_and_refuses_unknown_names(micro_zoo):
    target = micro_zoo["zoo"] / "full" / "math-gsm8k-full" / "training.json"
    other = micro_zoo["zoo"] / "models" / "math-gsm8k-first" / "training.json"
    before, other_before = target.stat().st_mtime_ns, other.stat().st_mtime_ns
    build_demo(micro_zoo["data"], micro_zoo["zoo"], ZooPlan.micro(), only=["math-gsm8k-full"])
    assert target.stat().st_mtime_ns > before and other.stat().st_mtime_ns == other_before
    with pytest.raises(DeltaAtlasError, match="no such model"):
        build_demo(micro_zoo["data"], micro_zoo["zoo"], ZooPlan.micro(), only=["math-nope"])


def test_a_fresh_clone_without_the_full_models_keeps_their_shipped_vectors(micro_zoo, tmp_path):
    import shutil

    from core.pool.vectors import read_vectors
    from core.zoo.demo_build import embed_zoo

    zoo = tmp_path / "clone"
    shutil.copytree(micro_zoo["zoo"], zoo, ignore=shutil.ignore_patterns("full"))   # what git ships
    before = read_vectors(zoo / "vectors.parquet")
    embed_zoo(zoo / "catalog.csv", zoo / "vectors.parquet", None)
    after = read_vectors(zoo / "vectors.parquet")
    assert list(after["name"]) == list(before["name"])
    for a, b in zip(before["vector"], after["vector"]):
        assert abs(a - b).max() < 1e-5
    (zoo / "vectors.parquet").unlink()
    with pytest.raises(DeltaAtlasError, match="--only"):
        embed_zoo(zoo / "catalog.csv", zoo / "vectors.parquet", None)


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DeltaAtlasError, match="does not exist"):
        build_demo(tmp_path / "nope", tmp_path / "zoo", ZooPlan.micro())


def test_command_line_flags_change_only_what_they_name():
    import argparse

    from core.zoo.demo_build import add_arguments, plan_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    plain = plan_from_args(parser.parse_args(["--data-dir", "d"]))
    assert plain == ZooPlan()
    shorter = plan_from_args(parser.parse_args(["--data-dir", "d", "--adapter-steps", "60", "--examples", "160",
                                                "--loss-on", "response"]))
    assert (shorter.recipe.steps, shorter.recipe.warmup_steps, shorter.examples_per_model) == (60, 6, 160)
    assert shorter.recipe.loss_on == "response" and shorter.recipe.rank == plain.recipe.rank
    with pytest.raises(DeltaAtlasError, match="--examples 0"):
        plan_from_args(parser.parse_args(["--data-dir", "d", "--examples", "0"]))
