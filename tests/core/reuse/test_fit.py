"""'Does it help?': each candidate's loss on the task's examples against the base, on the tiny pool. The stacked,
lower-layers-once path must give PEFT's own numbers; full finetunes and missing weights are handled; merge
candidates are exactly the measured LoRA adapters that help."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from peft import PeftModel

from core.engine.loading import load_model
from core.errors import DeltaAtlasError
from core.pool.catalog import read_catalog
from core.reuse.fit import HELP_MARGIN, gain_short, gain_words, helps, measure_gains, merge_candidates
from core.reuse.train import Example, example_loss
from tests.conftest import write_catalog
from tests.core.engine.test_stacked_lora import make_peft_lora

EXAMPLES = [Example("Add two and three.", "Five."), Example("Name a bird.", "A robin."),
            Example("Say hello.", "Hello there.", input="a greeting")]


@pytest.fixture(scope="module")
def top_pool(tiny_pool, tmp_path_factory):
    """The tiny pool's adapters, one more that changes only the top layer (the shortcut path), a full finetune and
    a model whose folder is missing."""
    root = tmp_path_factory.mktemp("fit_pool")
    base = tiny_pool["base"]
    top = make_peft_lora(base, root / "top_only", seed=7, r=4, lora_alpha=8, layers_pattern="layers",
                         target_modules=["q_proj", "v_proj", "up_proj"], layers_to_transform=[1])
    rows = [{"name": n, "source": str(p), "kind": "lora", "base": str(base), "domain": "ab"[i % 2]}
            for i, (n, p) in enumerate(tiny_pool["loras"].items())]
    rows += [{"name": "top_only", "source": str(top), "kind": "lora", "base": str(base), "domain": "a"},
             {"name": "full_0", "source": str(tiny_pool["fulls"]["full_0"]), "kind": "full", "base": str(base),
              "domain": "b"},
             {"name": "gone", "source": str(root / "gone"), "kind": "lora", "base": str(base), "domain": "a"}]
    return read_catalog(write_catalog(root / "catalog.csv", rows))


def peft_loss(base_dir, adapter_dir, examples=EXAMPLES) -> float:
    model, tokenizer = load_model(base_dir, "cpu", torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return example_loss(model, tokenizer, examples)


def test_gains_match_peft_for_every_route(top_pool, tiny_pool):
    names = ["lora_0", "lora_1", "top_only", "full_0"]
    gains = measure_gains(EXAMPLES, top_pool, names, top_pool.get("lora_0").base)
    assert list(gains["name"]) == names
    base = peft_loss(tiny_pool["base"], None)
    assert gains["base_loss"].iloc[0] == pytest.approx(base, rel=1e-4)
    for name in ("lora_0", "lora_1", "top_only"):
        expected = peft_loss(tiny_pool["base"], top_pool.get(name).source.local)
        assert gains.set_index("name").loc[name, "loss"] == pytest.approx(expected, rel=1e-4), name
    full_model, tokenizer = load_model(tiny_pool["fulls"]["full_0"], "cpu", torch.float32)
    assert gains.set_index("name").loc["full_0", "loss"] == pytest.approx(
        example_loss(full_model, tokenizer, EXAMPLES), rel=1e-4)
    row = gains.iloc[0]
    assert row["gain"] == pytest.approx((row["base_loss"] - row["loss"]) / row["base_loss"])
    assert (gains["helps"] == (gains["gain"] >= HELP_MARGIN)).all()


def test_only_top_layer_adapters_take_the_shortcut_and_agree(top_pool, tiny_pool):
    """With one adapter on the top layer only, the lower layer runs once: the loss is PEFT's all the same."""
    gains = measure_gains(EXAMPLES, top_pool, ["top_only"], top_pool.get("top_only").base)
    assert gains["loss"].iloc[0] == pytest.approx(peft_loss(tiny_pool["base"], top_pool.get("top_only").source.local),
                                                  rel=1e-4)


def test_examples_in_parts_of_uneven_length_give_the_same_loss(top_pool, tiny_pool, monkeypatch):
    """Examples padded in parts of similar length (here 2 and 1, of different lengths), the base and the adapter
    each summed over the parts: token-weighted means equal to PEFT's over all examples at once."""
    monkeypatch.setattr("core.reuse.fit.EXAMPLES_PER_PART", 2)
    gains = measure_gains(EXAMPLES, top_pool, ["top_only"], top_pool.get("top_only").base)
    assert gains["loss"].iloc[0] == pytest.approx(peft_loss(tiny_pool["base"], top_pool.get("top_only").source.local),
                                                  rel=1e-4)
    assert gains["base_loss"].iloc[0] == pytest.approx(peft_loss(tiny_pool["base"], None), rel=1e-4)


def test_examples_are_counted_one_by_one(top_pool, tiny_pool, monkeypatch):
    """``better`` counts the examples on which the model's own loss (PEFT's, example by example) is below the
    base's, for the stacked path, in parts, and for a full finetune."""
    monkeypatch.setattr("core.reuse.fit.EXAMPLES_PER_PART", 2)
    names = ["lora_0", "top_only", "full_0"]
    gains = measure_gains(EXAMPLES, top_pool, names, top_pool.get("lora_0").base).set_index("name")
    base_each = [peft_loss(tiny_pool["base"], None, [ex]) for ex in EXAMPLES]
    full_model, tokenizer = load_model(tiny_pool["fulls"]["full_0"], "cpu", torch.float32)
    for name in names:
        if name == "full_0":
            each = [example_loss(full_model, tokenizer, [ex]) for ex in EXAMPLES]
        else:
            each = [peft_loss(tiny_pool["base"], top_pool.get(name).source.local, [ex]) for ex in EXAMPLES]
        assert gains.loc[name, "better"] == sum(m < b for m, b in zip(each, base_each)), name
        assert gains.loc[name, "compared"] == len(EXAMPLES)


@pytest.mark.parametrize("gain, better, compared, expected", [
    (0.10, None, 0, True), (0.02, 9, 10, False), (0.10, 5, 10, True), (0.10, 2, 10, False), (None, 3, 3, False),
    (float("nan"), 3, 3, False)])
def test_helps_needs_the_margin_and_the_share(gain, better, compared, expected, monkeypatch):
    monkeypatch.setattr("core.reuse.fit.HELP_SHARE", 0.5)
    assert helps(gain, better, compared) is expected


def test_words_say_on_how_many_examples(monkeypatch):
    monkeypatch.setattr("core.reuse.fit.HELP_SHARE", 0.5)
    assert gain_words(0.12, 9, 12) == "lowers the error on your examples by 12% (better on 9 of 12)"
    assert "lower on only 2 of your 12 examples" in gain_words(0.12, 2, 12)
    assert gain_short(0.12, 9, 12) == "yes, 12% lower error"
    assert gain_short(0.12, 2, 12) == "no, better on only 2 of 12"


def test_missing_weights_are_reported_not_fatal(top_pool):
    gains = measure_gains(EXAMPLES, top_pool, ["gone", "lora_2"], top_pool.get("gone").base)
    gone = gains.set_index("name").loc["gone"]
    assert pd.isna(gone["loss"]) and gone["verdict"] == "not measured" and "not on this machine" in gone["note"]
    assert pd.notna(gains.set_index("name").loc["lora_2", "loss"])


def test_unknown_names_and_empty_responses_are_refused_before_work(top_pool):
    with pytest.raises(DeltaAtlasError, match="not in the catalog"):
        measure_gains(EXAMPLES, top_pool, ["nope"], top_pool.get("lora_0").base)
    with pytest.raises(DeltaAtlasError, match="at least"):
        measure_gains([], top_pool, ["lora_0"], top_pool.get("lora_0").base)


def test_merge_candidates_take_exactly_the_mergeable_helpers(top_pool):
    gains = pd.DataFrame({"name": ["lora_0", "full_0", "lora_1", "gone", "lora_2"],
                          "gain": [0.10, 0.30, -0.05, None, 0.03], "note": ["", "", "", "its weights are gone", ""]})
    gains["helps"] = gains["gain"].fillna(-1) >= HELP_MARGIN
    take, left_out = merge_candidates(gains, top_pool)
    assert take == ["lora_0", "lora_2"]                                 # best first, helpers only
    assert "full finetune" in left_out["full_0"] and "does not help" in left_out["lora_1"]
    assert "its weights are gone" in left_out["gone"]
    assert merge_candidates(None, top_pool) == ([], {})


@pytest.mark.parametrize("gain, words", [(0.12, "lowers the error on your examples by 12%"),
                                         (0.0, "does not help (about as good as the base model)"),
                                         (-0.5, "raises the error on your examples by 50%"), (None, "could not")])
def test_gain_words(gain, words):
    assert words in gain_words(gain)
