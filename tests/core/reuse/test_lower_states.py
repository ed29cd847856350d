"""One pass of the base's frozen lower layers per search: LowerStates keeps their output by token sequence, and
teaching, reading and the loss check give the same numbers with it as without it."""
from __future__ import annotations

import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from core.engine.loading import load_model
from core.reuse.fingerprints import read_examples
from core.reuse.lower_states import LowerStates
from core.reuse.task import find_models
from core.reuse.train import Recipe, TopLayers, encode
from tests.conftest import write_catalog
from tests.core.engine.test_stacked_lora import make_peft_lora
from tests.core.reuse.test_task import EXAMPLES, STEPS


def test_states_are_found_whole_or_for_a_kept_sequence_less_its_last_token():
    kept = LowerStates()
    state = torch.arange(12.0).reshape(4, 3)                         # [T, d]
    kept.keep(1, "float32", [5, 6, 7, 8], state)
    assert torch.equal(kept.find(1, "float32", [5, 6, 7, 8]), state)
    assert torch.equal(kept.find(1, "float32", [5, 6, 7]), state[:3])   # less the end-of-answer token: first rows
    assert kept.find(1, "float32", [5, 6]) is None                   # shorter starts are not looked for
    assert kept.find(1, "float32", [6, 7]) is None                   # not a start
    assert kept.find(1, "float32", [5, 6, 7, 8, 9]) is None          # longer than anything kept
    assert kept.find(1, "bfloat16", [5, 6]) is None                  # another precision never stands in
    assert kept.find(2, "float32", [5, 6]) is None                   # nor another layer
    assert kept.starts("float32") == [1] and kept.starts("bfloat16") == []


def test_the_byte_bound_stops_keeping_not_working():
    kept = LowerStates(max_bytes=48)
    kept.keep(1, "float32", [1, 2, 3, 4], torch.zeros(4, 3))         # 48 bytes: fits
    kept.keep(1, "float32", [9], torch.zeros(1, 3))                  # past the bound: not kept
    assert kept.bytes == 48 and kept.find(1, "float32", [9]) is None


@pytest.fixture(scope="module")
def tiny_base(tiny_pool):
    return load_model(tiny_pool["base"], "cpu", torch.float32)


def test_reading_from_kept_states_gives_the_full_passes_fingerprints(tiny_base):
    """The teaching step keeps the states of its token sequences (the whole text and its end-of-answer token);
    reading the same examples then runs only the layer above, and reads what the whole model reads."""
    model, tokenizer = tiny_base
    kept = LowerStates()
    TopLayers(model, 1, encode(EXAMPLES, tokenizer, 256, "text"), tokenizer.pad_token_id, nullcontext(), kept=kept)
    ids = [tokenizer(ex.prompt() + ex.response)["input_ids"] for ex in EXAMPLES]
    assert all(kept.find(1, "float32", seq) is not None for seq in ids)     # every read is a start of a taught one
    assert np.allclose(read_examples(model, tokenizer, EXAMPLES, kept), read_examples(model, tokenizer, EXAMPLES),
                       atol=1e-5)


@pytest.fixture(scope="module")
def top_pool(tiny_pool, tmp_path_factory):
    """Three adapters on the tiny base's top layer only, and a recipe that teaches that layer only: the pool in
    which a search's stages share the lower layer's pass."""
    root = tmp_path_factory.mktemp("top_pool")
    base = tiny_pool["base"]
    rows = [{"name": f"top_{i}", "kind": "lora", "base": str(base), "domain": "ab"[i % 2], "dataset": f"set{i}",
             "source": str(make_peft_lora(base, root / f"top_{i}", seed=i, r=4, lora_alpha=8, layers_pattern="layers",
                                          target_modules=["q_proj", "v_proj"], layers_to_transform=[1]))}
            for i in range(3)]
    write_catalog(root / "catalog.csv", rows)
    recipe = Recipe(rank=4, alpha=8, target_modules=("q_proj", "v_proj"), learning_rate=1e-2, batch_size=2,
                    warmup_steps=1, seed=3, layers=1)
    (root / "recipe.json").write_text(json.dumps(recipe.to_json()))
    return root / "catalog.csv"


def test_a_search_gives_the_same_answer_with_and_without_sharing(top_pool, monkeypatch, tmp_path):
    monkeypatch.setenv("DELTA_ATLAS_CACHE", str(tmp_path / "cache"))
    found = []
    real_find = LowerStates.find

    def counting_find(self, start, precision, ids):
        state = real_find(self, start, precision, ids)
        found.append(state is not None)
        return state

    monkeypatch.setattr(LowerStates, "find", counting_find)
    shared = find_models(EXAMPLES, top_pool, steps=STEPS, check_help=3)
    assert sum(found) >= len(EXAMPLES)                   # the loss check took the teaching step's states
    monkeypatch.setattr(LowerStates, "find", lambda self, start, precision, ids: None)
    alone = find_models(EXAMPLES, top_pool, steps=STEPS, check_help=3)
    assert np.allclose(shared.vector, alone.vector, atol=1e-5)
    assert np.allclose(shared.gains["loss"], alone.gains["loss"], atol=1e-5)
    assert list(shared.gains["better"]) == list(alone.gains["better"])
